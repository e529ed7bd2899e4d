"""Per-image segmentation metrics, the paper's batch-global Dice, and their summaries.

The paper reports one Dice over a whole batch of frames, which hides how often a model fails
on single frames and says nothing about the stray blobs that separate V-Unet from X-Unet
(claim 2 in ``docs/paper.md``). This module therefore measures every frame on its own (overlap,
boundary distance, connected components) and aggregates with the empty-mask rule below,
and keeps the paper's batch-global Dice beside it so results still compare with the paper.

NumPy, SciPy and scikit-image only (no TensorFlow), so evaluation runs anywhere.
"""

import math
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree
from skimage.measure import label

EMPTY_MASK_RULE = (
    "Per-image metrics; a frame with an empty mask (no rib pixel) is handled as follows: "
    "Dice and IoU are NaN when both the reference and the prediction are empty and 0 when "
    "only one of them is; precision is NaN when the prediction is empty; recall is NaN when "
    "the reference is empty; HD95 and ASSD are NaN when either mask is empty. Means, SDs and "
    "medians skip NaN values, and each metric reports how many images it counted."
)

OVERLAP_METRICS = ("dice", "iou", "accuracy", "precision", "recall")
COMPONENT_METRICS = ("components_pred", "components_ref", "spurious")
DISTANCE_METRICS = ("hd95", "assd")
# In mm, only when the pixel spacing is known (evaluation at each frame's own size).
MM_METRICS = ("hd95_mm", "assd_mm")
METRICS = OVERLAP_METRICS + DISTANCE_METRICS + MM_METRICS + COMPONENT_METRICS

# Pixel spacing: (row mm, column mm) of one pixel.
Spacing = tuple[float, float]

# 8-connectivity: pixels touching at a corner belong to one component (skimage's
# connectivity=2 in 2-D), so a diagonal rib edge is not split into many blobs.
CONNECTIVITY = 2


def _as_binary(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        raise ValueError(
            f"{name} must be binary (bool or 0/1); threshold probabilities or 0/255 masks first"
        )
    return array.astype(bool)


def _binary_pair(reference: Any, prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    reference = _as_binary(reference, "reference")
    prediction = _as_binary(prediction, "prediction")
    if reference.shape != prediction.shape:
        raise ValueError(
            f"reference and prediction differ in shape: {reference.shape} vs {prediction.shape}"
        )
    return reference, prediction


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """(row, col) of mask pixels with a 4-neighbour outside the mask, as an (n, 2) array.

    Outside the frame counts as background (``border_value=0``), so a mask that reaches the
    frame edge keeps its contour there, as in MedPy and MONAI.
    """
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(boundary)


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Optional[Spacing] = None) -> float:
    """95th-percentile Hausdorff distance between two masks' boundaries.

    For every boundary pixel of one mask, the Euclidean distance to the nearest boundary
    pixel of the other mask; the 95th percentile of those distances in each direction; the
    larger of the two. NaN when either mask is empty. Without ``spacing`` pixels are square
    and unit sized, so the value is in pixels of the resolution the masks are given at;
    with ``spacing`` = (row mm, column mm) of one pixel it is in mm.
    """
    return _distances(*_binary_pair(reference, prediction), spacing)[0]


def assd(reference: np.ndarray, prediction: np.ndarray, spacing: Optional[Spacing] = None) -> float:
    """Average symmetric surface distance: the mean of the boundary-to-nearest-boundary
    distances of both directions together (all of them, not a percentile), in pixels, or in
    mm with ``spacing``. NaN when either mask is empty."""
    return _distances(*_binary_pair(reference, prediction), spacing)[1]


def _distances(
    reference: np.ndarray, prediction: np.ndarray, spacing: Optional[Spacing] = None
) -> tuple[float, float]:
    """(HD95, ASSD) of two boolean masks, in pixels or, with ``spacing``, in mm."""
    if not reference.any() or not prediction.any():
        return math.nan, math.nan
    scale = np.array(spacing if spacing is not None else (1.0, 1.0), dtype=np.float64)
    reference_points = _boundary_points(reference) * scale
    prediction_points = _boundary_points(prediction) * scale
    # Nearest-neighbour queries between the two boundary point sets: a few thousand points
    # at most, several times faster than two distance transforms of the whole frame.
    to_reference = KDTree(reference_points).query(prediction_points)[0]
    to_prediction = KDTree(prediction_points).query(reference_points)[0]
    hd = float(max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95)))
    mean = float((to_reference.sum() + to_prediction.sum()) / (len(to_reference) + len(to_prediction)))
    return hd, mean


def image_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Optional[Spacing] = None) -> dict:
    """All per-image metrics of one predicted mask against its reference.

    Both masks are 2-D, of one shape, bool or 0/1. Returns a dict with:

    - ``dice``, ``iou``: overlap, NaN when both masks are empty, 0 when only one is;
    - ``accuracy``: share of pixels labelled correctly (dominated by background, as the
      paper's ``binary_accuracy`` is);
    - ``precision`` (NaN when the prediction is empty), ``recall`` (NaN when the reference
      is empty);
    - ``hd95``, ``assd``: see :func:`hd95` and :func:`assd`, in pixels at the resolution
      given; with ``spacing`` (row mm, column mm) also ``hd95_mm`` and ``assd_mm``;
    - ``components_pred``, ``components_ref``: connected components (8-connectivity);
    - ``spurious``: predicted components that touch no reference pixel, the stray blobs
      the paper shows in V-Unet's masks.

    See ``EMPTY_MASK_RULE``.
    """
    reference, prediction = _binary_pair(reference, prediction)
    true_positive = np.count_nonzero(reference & prediction)
    reference_area = np.count_nonzero(reference)
    prediction_area = np.count_nonzero(prediction)
    union = reference_area + prediction_area - true_positive
    errors = union - true_positive

    prediction_labels, components_pred = label(
        prediction, connectivity=CONNECTIVITY, return_num=True
    )
    components_ref = label(reference, connectivity=CONNECTIVITY, return_num=True)[1]
    hit_components = np.unique(prediction_labels[reference & prediction])
    spurious = components_pred - hit_components.size

    hd, mean = _distances(reference, prediction)
    millimetres = {}
    if spacing is not None:
        hd_mm, mean_mm = _distances(reference, prediction, spacing)
        millimetres = {"hd95_mm": hd_mm, "assd_mm": mean_mm}
    return {
        "dice": _ratio(2 * true_positive, reference_area + prediction_area),
        "iou": _ratio(true_positive, union),
        "accuracy": float(1.0 - errors / reference.size),
        "precision": _ratio(true_positive, prediction_area),
        "recall": _ratio(true_positive, reference_area),
        "hd95": hd,
        "assd": mean,
        **millimetres,
        "components_pred": int(components_pred),
        "components_ref": int(components_ref),
        "spurious": int(spurious),
    }


def evaluate_masks(
    references: Iterable[np.ndarray], predictions: Iterable[np.ndarray], spacing: Optional[Spacing] = None
) -> list:
    """:func:`image_metrics` for each (reference, prediction) pair; a list of dicts."""
    references = list(references)
    predictions = list(predictions)
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference masks but {len(predictions)} predictions")
    return [image_metrics(ref, pred, spacing) for ref, pred in zip(references, predictions)]


# The notebooks scored a test list with flow_from_dataframe (shuffle on, seed 1): Keras seeded
# NumPy with 1 and drew np.random.permutation of the rows before the first batch, so every model
# was scored on the same batches, in this order.
NOTEBOOK_SEED = 1


def notebook_order(n: int, seed: int = NOTEBOOK_SEED) -> np.ndarray:
    """The order in which the authors' evaluation drew the ``n`` rows of a test list into
    batches: ``np.random.RandomState(1).permutation(n)``, the same for every model and run."""
    return np.random.RandomState(seed).permutation(n)


def batch_dice(
    references: np.ndarray, predictions: np.ndarray, smooth: float = 1.0, batch_size: Optional[int] = None
) -> float:
    """The paper's Dice: ``(2 sum(t p) + smooth) / (sum(t) + sum(p) + smooth)`` over all pixels.

    NumPy twin of ``lungseg.losses.dice_coef``. Arrays are used as given: pass thresholded
    masks for the Dice of the binary masks, or sigmoid probabilities for the soft Dice that
    Keras logs as ``dice_coef`` during training (what the paper's tables report). The first
    axis indexes images; (N, H, W) and (N, H, W, 1) arrays mix freely, and a list of frames of
    different sizes (each reference the size of its prediction) pools each batch's pixels.

    With ``batch_size=None`` the whole set is one batch (the global Dice). With a batch size,
    the Dice of each consecutive batch is averaged with equal weight per batch, which is how
    Keras' ``evaluate_generator`` reported the paper's numbers (batches of 20).
    """
    return _batch_mean(_dice, references, predictions, smooth, batch_size)


def batch_iou(
    references: np.ndarray, predictions: np.ndarray, smooth: float = 1.0, batch_size: Optional[int] = None
) -> float:
    """The paper's IoU, ``(sum(t p) + smooth) / (sum(t) + sum(p) - sum(t p) + smooth)``, batched
    as :func:`batch_dice`; NumPy twin of ``lungseg.losses.iou``."""
    return _batch_mean(_iou, references, predictions, smooth, batch_size)


def _batch_mean(
    overlap: Callable[[np.ndarray, np.ndarray, float], float],
    references: np.ndarray,
    predictions: np.ndarray,
    smooth: float,
    batch_size: Optional[int],
) -> float:
    if _ragged(references) or _ragged(predictions):
        return _pooled_batch_mean(overlap, references, predictions, smooth, batch_size)
    references = np.asarray(references, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    if len(references) != len(predictions) or references.size != predictions.size:
        raise ValueError(
            f"references and predictions differ in shape: "
            f"{references.shape} vs {predictions.shape}"
        )
    if len(references) == 0:
        return math.nan
    references = references.reshape(len(references), -1)
    predictions = predictions.reshape(len(predictions), -1)
    if batch_size is None:
        batch_size = len(references)
    splits = range(batch_size, len(references), batch_size)
    values = [
        overlap(batch_references, batch_predictions, smooth)
        for batch_references, batch_predictions in zip(
            np.split(references, splits), np.split(predictions, splits)
        )
    ]
    return float(np.mean(values))


def _ragged(frames: Any) -> bool:
    """True for a list of frames that differ in shape (not one array)."""
    return not isinstance(frames, np.ndarray) and len({np.shape(frame) for frame in frames}) > 1


def _pooled_batch_mean(
    overlap: Callable[[np.ndarray, np.ndarray, float], float],
    references: Iterable[np.ndarray],
    predictions: Iterable[np.ndarray],
    smooth: float,
    batch_size: Optional[int],
) -> float:
    """:func:`_batch_mean` of frames of different sizes: each batch's pixels pooled."""
    references = [np.asarray(r, np.float64).ravel() for r in references]
    predictions = [np.asarray(p, np.float64).ravel() for p in predictions]
    if len(references) != len(predictions) or any(r.size != p.size for r, p in zip(references, predictions)):
        raise ValueError("references and predictions differ in number or in the size of a frame")
    if not references:
        return math.nan
    batch_size = batch_size or len(references)
    values = [
        overlap(np.concatenate(references[start : start + batch_size])[None],
                np.concatenate(predictions[start : start + batch_size])[None], smooth)
        for start in range(0, len(references), batch_size)
    ]
    return float(np.mean(values))


def _dice(references: np.ndarray, predictions: np.ndarray, smooth: float) -> float:
    intersection = np.sum(references * predictions)
    return (2.0 * intersection + smooth) / (np.sum(references) + np.sum(predictions) + smooth)


def _iou(references: np.ndarray, predictions: np.ndarray, smooth: float) -> float:
    intersection = np.sum(references * predictions)
    union = np.sum(references) + np.sum(predictions) - intersection
    return (intersection + smooth) / (union + smooth)


def aggregate_folds(per_fold: Mapping[str, float]) -> dict:
    """Mean, SDs and best of one metric over folds: ``{fold name: value}`` -> dict.

    The one rule for every report: ``n`` folds counted; ``mean`` (None with no fold);
    ``sd`` the sample SD (ddof 1) and ``sd_paper`` ``np.std`` (ddof 0, what the paper
    reported), both None with fewer than two folds; ``best`` the fold with the highest value
    and ``best_value`` its value (None with no fold).
    """
    values = np.array(list(per_fold.values()), dtype=np.float64)
    several = len(values) > 1
    best = max(per_fold, key=per_fold.get) if per_fold else None
    return {
        "n": len(values),
        "mean": float(values.mean()) if len(values) else None,
        "sd": float(values.std(ddof=1)) if several else None,
        "sd_paper": float(values.std(ddof=0)) if several else None,
        "best": best,
        "best_value": float(per_fold[best]) if per_fold else None,
    }


def summarize(rows: Iterable[Mapping]) -> dict:
    """Aggregate per-image metric rows (as from :func:`image_metrics`) into one summary.

    Keys of the rows that are not metrics (a file name, a model name) are ignored. Returns::

        {"images": N, "empty_reference": k, "empty_prediction": k,
         "empty_mask_rule": EMPTY_MASK_RULE,
         "metrics": {name: {"mean", "sd", "median", "count"}}}

    ``count`` is how many images had a value (not NaN) for that metric; ``mean``, ``sd``
    (sample SD, ddof=1) and ``median`` are over those images and NaN when there are too few.
    """
    rows = list(rows)
    summary = {
        "images": len(rows),
        "empty_reference": sum(1 for row in rows if row.get("components_ref") == 0),
        "empty_prediction": sum(1 for row in rows if row.get("components_pred") == 0),
        "empty_mask_rule": EMPTY_MASK_RULE,
        "metrics": {},
    }
    for name in METRICS:
        if not any(name in row for row in rows):
            continue
        values = np.array([row.get(name, math.nan) for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary["metrics"][name] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
            "median": float(np.median(values)) if values.size else math.nan,
            "count": int(values.size),
        }
    return summary


def nan_to_none(value: Any) -> Any:
    """Copy of nested dicts/lists with NaN floats replaced by ``None``, for strict JSON.

    ``json.dumps`` writes NaN as the bare word ``NaN``, which Python reads back but most
    other JSON readers reject.
    """
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
