"""One scoring path: a model and frames in, per-frame rows and per-set metrics out.

The stage runner scores its best model on the validation frames with :func:`score_frames`,
and ``evaluate.py`` scores every fold model with the same function, so training and
evaluation cannot report different numbers for the same model and frames. A folder of
predicted masks (``evaluate.py --masks``) is scored by :func:`score_masks` through the same
:func:`set_metrics`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from lungseg.evaluation import batch_dice, batch_iou, image_metrics, summarize
from lungseg.predict import DEFAULT_BATCH_SIZE, DEFAULT_THRESHOLD, predict_probabilities

if TYPE_CHECKING:
    import keras

    from lungseg.data.frames import FrameSet
    from lungseg.evaluation import Spacing

# The paper's numbers are Keras' evaluate over batches of 20 frames: the mean of batch Dice.
PAPER_BATCH = 20
# The salient pre-training's Dice (the notebook's 0.719) is Keras' validation in batches of 30.
SALIENT_BATCH = 30

METRIC_DEFINITIONS = {
    "dice": f"the paper's Dice: soft Dice (smoothing 1) of each batch of {PAPER_BATCH} frames "
    f"({SALIENT_BATCH} for the salient pre-training), averaged over batches, as Keras reported it; "
    "a test list's frames are batched in the notebooks' order (numpy RandomState(1).permutation "
    "of the list's rows), other frames in the order scored, the last batch holding the rest",
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
    masks: Any  # (n, h, w) uint8 predicted masks of 0/1 (a list of frames' masks: score_masks)
    probabilities: Any  # (n, h, w) float32 probabilities the masks were thresholded from


def stage_dice_batch(stage_name: str) -> int:
    """How many frames the paper's Dice of a stage pools per batch: 30 for the salient
    pre-training (its batch size in the notebook), else 20."""
    return SALIENT_BATCH if stage_name == "pretrain" else PAPER_BATCH


def score_frames(model: "keras.Model", frames: "FrameSet", batch_size: int = DEFAULT_BATCH_SIZE,
                 dice_batch: int = PAPER_BATCH, order: "Optional[np.ndarray]" = None) -> Scores:
    """Score ``model`` on a ``FrameSet`` at the model's resolution; a :class:`Scores`.

    The paper's ``dice`` and ``iou`` pool ``dice_batch`` frames per batch, the batches taken in
    ``order`` (frame indices, e.g. :func:`lungseg.evaluation.notebook_order`; None: as given).
    """
    probabilities = predict_probabilities(model, frames.images[..., 0], batch_size)
    references = frames.masks[..., 0]
    masks = (probabilities > DEFAULT_THRESHOLD).astype(np.uint8)
    rows = [
        {"frame": name, **image_metrics(reference, mask)}
        for name, reference, mask in zip(frames.names, references, masks)
    ]
    metrics = set_metrics(references, probabilities, masks, rows, dice_batch, order)
    return Scores(metrics=metrics, rows=rows, masks=masks, probabilities=probabilities)


def score_masks(names: Sequence[str], references: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                spacing: "Optional[Spacing]" = None, dice_batch: int = PAPER_BATCH) -> Scores:
    """Score predicted 0/1 ``masks`` (another tool's, any sizes) against ``references``, each
    the size of its mask: the numbers :func:`score_frames` gives a model, the masks standing
    for the probabilities (batches in the order given). Rows carry HD95 and ASSD in mm too
    with ``spacing``."""
    rows = [
        {"frame": name, **image_metrics(reference, mask, spacing)}
        for name, reference, mask in zip(names, references, masks)
    ]
    metrics = set_metrics(list(references), list(masks), list(masks), rows, dice_batch)
    return Scores(metrics=metrics, rows=rows, masks=list(masks), probabilities=list(masks))


def set_metrics(references: Any, probabilities: Any, masks: Any, rows: list,
                dice_batch: int = PAPER_BATCH, order: "Optional[np.ndarray]" = None) -> dict:
    """The set-level numbers (``METRIC_DEFINITIONS``' keys, the frame count and the shares of
    empty and full masks) of scored frames: (n, h, w) arrays, or lists of frames of different
    sizes; ``rows`` are their ``image_metrics`` rows."""
    order = np.arange(len(references)) if order is None else np.asarray(order)
    predicted = np.array([np.count_nonzero(mask) for mask in masks])
    has_ribs = np.array([np.count_nonzero(reference) for reference in references]) > 0
    sizes = np.array([np.size(mask) for mask in masks])
    with_ribs = max(int(has_ribs.sum()), 1)
    return {
        "dice": batch_dice(_take(references, order), _take(probabilities, order), batch_size=dice_batch),
        "dice_global": batch_dice(references, probabilities),
        "dice_per_image": summarize(rows)["metrics"]["dice"]["mean"],
        "iou": batch_iou(_take(references, order), _take(probabilities, order), batch_size=dice_batch),
        "binary_accuracy": _pixel_agreement(references, masks),
        "frames": len(references),
        "empty_predictions": float(np.mean(predicted == 0)),
        "empty_references": float(np.mean(~has_ribs)),
        "empty_on_ribs": float(np.sum((predicted == 0) & has_ribs) / with_ribs),
        "full_predictions": float(np.mean(predicted == sizes)),
    }


def _take(frames: Any, order: np.ndarray) -> Any:
    return frames[order] if isinstance(frames, np.ndarray) else [frames[i] for i in order]


def _pixel_agreement(references: Any, masks: Any) -> float:
    """Share of all pixels where mask and reference agree (every pixel of every frame)."""
    if isinstance(masks, np.ndarray) and isinstance(references, np.ndarray):
        return float(np.mean(masks == references))
    agree = sum(int(np.count_nonzero(np.asarray(m) == np.asarray(r))) for m, r in zip(masks, references))
    total = sum(np.size(m) for m in masks)
    return agree / total if total else float("nan")
