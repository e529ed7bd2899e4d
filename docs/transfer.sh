#!/usr/bin/env bash
# The transfer-learning measurement of docs/transfer.md: does pre-training on a real phantom's
# other target beat pre-training on generated salient composites, or none, when only 20, 50 or
# 100 annotated frames are there to fine-tune on? X-Unet and V-Unet; the pleural line into the
# rib shadow and the reverse; every fold model scored on the sweep's last block, which no model
# saw. Run from the repository root, with the phantom in its own layout (image/ + masks/<target>/):
#
#     PHANTOM=/path/to/phantom OUT=/tmp/transfer bash docs/transfer.sh          # every row
#     MODELS=xunet TARGETS=rib_shadow SIZES=20 FOLDS=1 ... bash docs/transfer.sh  # some of them
#
# OUT holds the sets (links to the phantom's files), the run folders and the results (nothing
# is written in the repository). Each fold is its own job, so a killed script loses at most one
# fold; run it again to go on.
set -euo pipefail
PHANTOM=${PHANTOM:?set PHANTOM to the folder holding image/ and masks/}
PHANTOM=$(cd "$PHANTOM" && pwd)  # the sets under OUT link to its files
OUT=${OUT:-/tmp/transfer}
PY=${PY:-python}
MODELS=${MODELS:-"xunet vunet"}
TARGETS=${TARGETS:-"rib_shadow pleural_line"}  # fine-tuning targets; pre-training takes the other
SIZES=${SIZES:-"20 50 100"}                     # fine-tuning frames
FOLDS=${FOLDS:-"1 2 3 4"}
BLOCK=${BLOCK:-145}          # frame numbers per group: 4 blocks to train on, the fifth to test
TEST_FROM=${TEST_FROM:-580}  # frames numbered from here on (the last block) are the test set
# Epochs of the stages that train on N fine-tuning frames: the sound preset's (read from
# lungseg: X-Unet's pre-training stage, on its own set, stays as it is) made 100/N times longer,
# so that every size gets the updates of 100 frames and a small set is not also a short
# training (8 epochs of 15 frames are 30 steps, after which nothing had learned). The rows were
# measured so, before the sound preset raised a small set's epochs by itself (--budget-frames
# 100, by the fold's training frames rather than the set's); --budget-frames 0 keeps them as measured.
epochs() {  # MODEL N
  local times=$(( (100 + $2 - 1) / $2 )) stage1 finetune
  read -r stage1 finetune < <($PY -c "from lungseg.config import make_config
config = make_config('$1', 'x', 'sound')
print(config.stage1.epochs, config.finetune.epochs)")
  [ "$1" = xunet ] && echo "$stage1 $((finetune * times))" || echo "$((stage1 * times)) $((finetune * times))"
}
read -ra EXTRA <<< "${EXTRA:-}"  # more training options (the smoke test's tiny sizes)
# Frames 1-721 of one sweep (every third kept) at 96 x 128 (their 3:4 aspect; the sound preset
# crops to the sector first), 4 folds of whole blocks, no mirror copies.
COMMON=(--preset sound --image-size "${SIZE:-96x128}" --groups "blocks:$BLOCK" --split grouped
        --folds 4 --no-flips --budget-frames 0 --out "$OUT/runs" "${EXTRA[@]}")

other() { [ "$1" = rib_shadow ] && echo pleural_line || echo rib_shadow; }

# --- the sets: links to the phantom's frames and both targets' masks ----------------------------
link_set() {  # NAME FRAME...: $OUT/data/NAME with image/ and masks/<target>/ of these frames
  local set=$OUT/data/$1 frame target
  shift
  [ -d "$set" ] && return 0
  rm -rf "$set.part"
  mkdir -p "$set.part/image" "$set.part/masks/rib_shadow" "$set.part/masks/pleural_line"
  for frame in "$@"; do
    ln -s "$PHANTOM/image/$frame".* "$set.part/image/"
    for target in rib_shadow pleural_line; do
      ln -s "$PHANTOM/masks/$target/$frame".* "$set.part/masks/$target/"
    done
  done
  mv "$set.part" "$set"
}
spread() {  # N FRAME...: N of the frames, evenly spaced
  local n=$1 i
  shift
  local frames=("$@")
  for ((i = 0; i < n; i++)); do echo "${frames[i * ${#frames[@]} / n]}"; done
}
# Frame stems in frame-number order (the number a name ends with), split at TEST_FROM.
mapfile -t stems < <(for file in "$PHANTOM"/image/*; do
  stem=${file##*/}; stem=${stem%.*}; echo "${stem##*[!0-9]} $stem"; done | sort -n | cut -d' ' -f2)
training=() test=()
for stem in "${stems[@]}"; do
  if [ "${stem##*[!0-9]}" -lt "$TEST_FROM" ]; then training+=("$stem"); else test+=("$stem"); fi
done
link_set phantom-train "${training[@]}"  # the pre-training set (its other target)
link_set phantom-test "${test[@]}"
for n in $SIZES; do
  [ "$n" -le ${#training[@]} ] || { echo "error: $n fine-tuning frames asked, ${#training[@]} there" >&2; exit 2; }
  mapfile -t chosen < <(spread "$n" "${training[@]}")
  link_set "finetune-$n" "${chosen[@]}"
done

# --- training ----------------------------------------------------------------------------------
# Rows are <model>-<source>-<fine-tuning target>-<frames>. The X-Unet rows of the first size
# pre-train; those of the other sizes fine-tune that same pre-trained model (--pretrained
# RUN/pretrain). X-Unet's chained rows, and V-Unet's phantom rows, start from a whole run on
# the phantom's other target (its training frames, fold 1; for X-Unet the sound preset's 8
# epochs at 1e-4, not its gentle pre-training): --pretrained RUN/fold_1, --encoder-weights RUN/fold_1.
first_size=${SIZES%% *}
sources() { [ "$1" = xunet ] && echo "phantom chained composites none" || echo "phantom none"; }
done_fold() { [ -f "$OUT/runs/$1/fold_$2/metrics.json" ]; }

source_run() {  # MODEL TARGET: a whole run on the phantom's TARGET, the start of other runs
  local name=$1-source-$2 start=()
  done_fold "$name" 1 && return 0
  [ "$1" = vunet ] && start=(--encoder-weights none)
  $PY "train_$1.py" --data "$OUT/data/phantom-train" --target "$2" --lus-frames ${#training[@]} \
    --name "$name" --fold 1 "${COMMON[@]}" "${start[@]}"
}

train() {  # MODEL SOURCE TARGET FRAMES FOLD: one fold of one row, skipped once done
  local model=$1 source=$2 target=$3 n=$4 fold=$5 start=()
  local row=$model-$source-$target-$n pretrained=$OUT/runs/$model-$source-$target-$first_size/pretrain
  done_fold "$row" "$fold" && return 0
  case $model-$source in
    xunet-none) start=(--pretrained none) ;;
    xunet-chained) source_run xunet "$(other "$target")"
                   start=(--pretrained "$OUT/runs/xunet-source-$(other "$target")/fold_1") ;;
    xunet-*) if [ "$n" != "$first_size" ]; then
               [ -f "$pretrained/model.keras" ] || train "$model" "$source" "$target" "$first_size" "$fold"
               start=(--pretrained "$pretrained")
             elif [ "$source" = phantom ]; then
               start=(--salient "$OUT/data/phantom-train" --salient-target "$(other "$target")"
                      --salient-groups "blocks:$BLOCK" --salient-split grouped)
             fi ;;
    vunet-phantom) source_run vunet "$(other "$target")"
                   start=(--encoder-weights "$OUT/runs/vunet-source-$(other "$target")/fold_1") ;;
    vunet-none) start=(--encoder-weights none) ;;
  esac
  $PY "train_$model.py" --data "$OUT/data/finetune-$n" --target "$target" --lus-frames "$n" \
    --epochs $(epochs "$model" "$n") --name "$row" --fold "$fold" "${COMMON[@]}" "${start[@]}"
}
for target in $TARGETS; do
  for n in $SIZES; do
    for model in $MODELS; do
      for source in $(sources "$model"); do
        for fold in $FOLDS; do
          train "$model" "$source" "$target" "$n" "$fold"
        done
      done
    done
  done
done

# --- scoring: every fold model on the test block, at each frame's own size ------------------------
for target in $TARGETS; do
  for n in $SIZES; do
    runs=()
    for model in $MODELS; do
      for source in $(sources "$model"); do
        [ -d "$OUT/runs/$model-$source-$target-$n" ] && runs+=("$OUT/runs/$model-$source-$target-$n")
      done
    done
    [ ${#runs[@]} -gt 0 ] || continue
    $PY evaluate.py "${runs[@]}" --allow-partial --test "$OUT/data/phantom-test" --target "$target" \
      --out "$OUT/results/$target-$n"
  done
done
