#!/usr/bin/env bash
# The subject-held-out comparison of docs/beyond_the_paper.md: the quick recipe against the
# sound one, same budget, on phantom subjects never seen in training, for a linear and a convex
# probe and a thin (line) and a thick (shadow) target. Run from the repository root:
#
#     OUT=/tmp/beyond bash docs/beyond_the_paper.sh          # 2-3 hours on 2 shared CPU cores
#     python docs/make_beyond_the_paper_figure.py /tmp/beyond
#
# OUT holds the data, run folders and results (nothing is written in the repository).
set -euo pipefail
OUT=${OUT:-/tmp/beyond}
PY=${PY:-python}

# Data: 6 training subjects (seed 11) and 3 other, held-out subjects (seed 12) per probe, two
# probe positions each. The two targets mark different structures on the very same frames.
for probe in linear convex; do
  for target in line shadow; do
    $PY -m lungseg.data lus --subjects 6 --n 120 --seed 11 --probe $probe --target $target \
      --out "$OUT/data/$probe-$target-train" --quiet
    $PY -m lungseg.data lus --subjects 3 --n 60 --seed 12 --probe $probe --target $target \
      --out "$OUT/data/$probe-$target-test" --quiet
  done
done

# Training: X-Unet, the quick preset against the sound preset (the same 80 frames, epochs, batch
# and learning rates; 8 epochs, as the sound preset trained when this was measured). The first quick run of each input size pre-trains on salient composites
# as the preset does; every other run of that size fine-tunes that same pre-trained model, so
# the two recipes start alike and differ only in how they fine-tune.
train() {  # NAME OPTIONS...: train_xunet.py into $OUT/runs/NAME, skipped once finished
  local name=$1
  shift
  grep -qs '"complete": true' "$OUT/runs/$name/summary.json" && return 0
  $PY train_xunet.py --out "$OUT/runs" --name "$name" "$@"
}
for probe in linear convex; do
  size=()
  [ $probe = convex ] && size=(--image-size 96x128)  # 820 x 1124 frames; quick: 128 x 64
  pretrained="$OUT/runs/quick-$probe-line/pretrain/model.keras"
  train quick-$probe-line --preset quick --data "$OUT/data/$probe-line-train" "${size[@]}"
  train sound-$probe-line --preset sound --data "$OUT/data/$probe-line-train" "${size[@]}" \
    --pretrained "$pretrained" --lus-frames 80 --budget-frames 0
  for preset in quick sound; do
    train $preset-$probe-shadow --preset $preset --data "$OUT/data/$probe-shadow-train" \
      "${size[@]}" --pretrained "$pretrained" --lus-frames 80 --budget-frames 0
  done
done

# Scoring: every fold model of both recipes on the held-out subjects' frames.
for probe in linear convex; do
  for target in line shadow; do
    $PY evaluate.py "$OUT/runs/quick-$probe-$target" "$OUT/runs/sound-$probe-$target" \
      --test "$OUT/data/$probe-$target-test" --out "$OUT/results/$probe-$target" --save-masks
  done
done
