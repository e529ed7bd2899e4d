"""One scoring path: a model and frames in, per-frame rows and per-set metrics out.

The stage runner scores its best model on the validation frames with :func:`score_frames`,
and ``evaluate.py`` scores every fold model with the same function, so training and
evaluation cannot report different numbers for the same model and frames.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungseg.evaluation import batch_dice, batch_iou, image_metrics, summarize
from lungseg.predict import DEFAULT_BATCH_SIZE, predict_probabilities

if TYPE_CHECKING:
    import keras

    from lungseg.data.frames import FrameSet

# The paper's numbers are Keras' evaluate over batches of 20 frames: the mean of batch Dice.
PAPER_BATCH = 20

METRIC_DEFINITIONS = {
    "dice": f"the paper's Dice: soft Dice (smoothing 1) of each batch of {PAPER_BATCH} frames, "
    "averaged over batches, as Keras' evaluate reported it",
    "dice_global": "soft Dice (smoothing 1) over all scored frames at once",
    "dice_per_image": "mean over frames of each frame's Dice of the mask thresholded at 0.5 "
    "(frames with both masks empty skipped)",
    "iou": f"the paper's IoU (smoothing 1), averaged over batches of {PAPER_BATCH} frames",
    "binary_accuracy": "share of pixels labelled correctly at threshold 0.5",
}


@dataclass
class Scores:
    """What scoring a model on a set of frames gives."""

    metrics: dict  # set-level numbers: METRIC_DEFINITIONS' keys, frame counts, degenerate shares
    rows: list  # one dict per frame: "frame" and lungseg.evaluation.image_metrics
    masks: np.ndarray  # (n, h, w) uint8 predicted masks of 0/1


def score_frames(model: "keras.Model", frames: "FrameSet", batch_size: int = DEFAULT_BATCH_SIZE) -> Scores:
    """Score ``model`` on a ``FrameSet`` at the model's resolution; a :class:`Scores`."""
    probabilities = predict_probabilities(model, frames.images[..., 0], batch_size)
    references = frames.masks[..., 0]
    masks = (probabilities > 0.5).astype(np.uint8)
    rows = [
        {"frame": name, **image_metrics(reference, mask)}
        for name, reference, mask in zip(frames.names, references, masks)
    ]
    predicted = masks.reshape(len(masks), -1).sum(axis=1)
    has_ribs = references.reshape(len(references), -1).sum(axis=1) > 0
    with_ribs = max(int(has_ribs.sum()), 1)
    metrics = {
        "dice": batch_dice(references, probabilities, batch_size=PAPER_BATCH),
        "dice_global": batch_dice(references, probabilities),
        "dice_per_image": summarize(rows)["metrics"]["dice"]["mean"],
        "iou": batch_iou(references, probabilities, batch_size=PAPER_BATCH),
        "binary_accuracy": float(np.mean(masks == references)),
        "frames": len(frames),
        "empty_predictions": float(np.mean(predicted == 0)),
        "empty_references": float(np.mean(~has_ribs)),
        "empty_on_ribs": float(np.sum((predicted == 0) & has_ribs) / with_ribs),
        "full_predictions": float(np.mean(predicted == masks[0].size)),
    }
    return Scores(metrics=metrics, rows=rows, masks=masks)
