#!/usr/bin/env bash
# The real-ultrasound measurement of docs/real_phantom.md: X-Unet and V-Unet (random encoder
# where ImageNet cannot be downloaded), the quick preset against the sound one, on the two
# hand-drawn targets of 203 frames of a physical lung phantom, 5 folds of contiguous blocks of
# frame numbers (one sweep: neighbouring frames are near-duplicates, so no block is split).
# Run from the repository root, with the frames in the set's own layout (image/ + masks/<target>/):
#
#     PHANTOM=/path/to/phantom OUT=/tmp/real bash docs/real_phantom.sh      # all 8 rows
#     ROWS="xunet-sound-rib_shadow" FOLDS="1 2" ... bash docs/real_phantom.sh  # some of them
#
# About an hour of CPU per X-Unet row on 2 cores (float32), 20 min of wall time per V-Unet row
# (mixed bfloat16 where the CPU has it). Each fold is its own job, so a
# killed script loses at most one fold; run it again to go on. OUT holds the run folders and
# results (nothing is written in the repository).
set -euo pipefail
PHANTOM=${PHANTOM:?set PHANTOM to the folder holding image/ and masks/}
OUT=${OUT:-/tmp/real}
PY=${PY:-python}
ROWS=${ROWS:-"xunet-quick-rib_shadow xunet-sound-rib_shadow xunet-quick-pleural_line
  xunet-sound-pleural_line vunet-quick-rib_shadow vunet-sound-rib_shadow
  vunet-quick-pleural_line vunet-sound-pleural_line"}
FOLDS=${FOLDS:-"1 2 3 4 5"}

# Frames 1-721 of one sweep (every third kept): blocks of 145 frame numbers give 5 groups of
# about 40 frames; each fold holds one block out. All 203 frames, without mirror copies; 96 x 128
# keeps the frames' 3:4 aspect (the sound preset crops to the sector first).
COMMON=(--data "$PHANTOM" --groups blocks:145 --split grouped --folds 5 --lus-frames 203
        --no-flips --image-size 96x128 --out "$OUT/runs")
# Every X-Unet row fine-tunes the same model, pre-trained once on salient composites as the
# sound preset does, so the rows differ only in how they fine-tune.
PRETRAINED="$OUT/runs/xunet-sound-rib_shadow/pretrain/model.keras"

train() {  # ROW FOLD: one fold of one row, skipped once done
  local row=$1 fold=$2 model preset target extra=()
  IFS=- read -r model preset target <<< "$row"
  [ -f "$OUT/runs/$row/fold_$fold/metrics.json" ] && return 0
  if [ "$model" = xunet ] && [ "$row" != xunet-sound-rib_shadow ]; then
    [ -f "$PRETRAINED" ] || train xunet-sound-rib_shadow "$fold"
    extra=(--pretrained "$PRETRAINED")
  fi
  $PY "train_$model.py" --preset "$preset" --target "$target" --name "$row" --fold "$fold" \
    "${COMMON[@]}" "${extra[@]}"
}
for row in $ROWS; do
  for fold in $FOLDS; do
    train "$row" "$fold"
  done
done

# Scoring: each fold model on its held-out block, at each frame's own size (768 x 1024).
for target in rib_shadow pleural_line; do
  runs=()
  for row in $ROWS; do
    [[ $row == *-$target ]] && [ -d "$OUT/runs/$row" ] && runs+=("$OUT/runs/$row")
  done
  [ ${#runs[@]} -gt 0 ] || continue
  $PY evaluate.py "${runs[@]}" --allow-partial --out "$OUT/results/$target" --save-masks
done
