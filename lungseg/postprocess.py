"""Clean-up of predicted masks and the numbers of one predicted frame (NumPy and scikit-image).

Prediction (``lungseg-predict``) and evaluation (``evaluate.py --min-size/--keep-largest``)
use the same :class:`PostProcess`, so the effect measured is the effect delivered.
"""

from dataclasses import dataclass

import numpy as np
from skimage.measure import label

from lungseg.errors import ConfigError
from lungseg.evaluation import CONNECTIVITY

@dataclass(frozen=True)
class PostProcess:
    """Connected-component clean-up of a binary mask (8-connectivity, as evaluation counts).

    ``min_size``: components with fewer pixels (at the mask's resolution) are removed.
    ``keep_largest``: then only the N largest components are kept (None: all).
    """

    min_size: int = 0
    keep_largest: int = None

    def __post_init__(self):
        if self.min_size < 0:
            raise ConfigError(f"minimum component size must be 0 or more, got {self.min_size}")
        if self.keep_largest is not None and self.keep_largest < 1:
            raise ConfigError(f"keep-largest must be at least 1, got {self.keep_largest}")

    @property
    def active(self):
        return self.min_size > 0 or self.keep_largest is not None

    def describe(self):
        parts = []
        if self.min_size:
            parts.append(f"components under {self.min_size} px removed")
        if self.keep_largest is not None:
            parts.append(f"largest {self.keep_largest} component(s) kept")
        return ", ".join(parts) or "none"

    def __call__(self, mask):
        return postprocess(mask, self.min_size, self.keep_largest)


def postprocess(mask, min_size=0, keep_largest=None):
    """``mask`` (2-D, 0/1 or bool) without components under ``min_size`` pixels, and only
    its ``keep_largest`` largest ones when given (ties broken by position, top-left first).
    Returns uint8 0/1 of the same shape."""
    mask = np.asarray(mask).astype(bool)
    if not min_size and keep_largest is None:
        return mask.astype(np.uint8)
    labels, count = label(mask, connectivity=CONNECTIVITY, return_num=True)
    if count == 0:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    kept = np.flatnonzero(sizes >= min_size)
    if keep_largest is not None:
        kept = kept[np.argsort(-sizes[kept], kind="stable")][:keep_largest]
    return np.isin(labels, kept + 1).astype(np.uint8)


def frame_record(mask, probability=None, spacing=None):
    """Numbers of one predicted frame: rib area (px, and mm² with a spacing), components,
    mean probability over the predicted rib pixels (None when none is predicted).

    ``mask`` is the final 0/1 mask at the frame's own size; ``probability`` the sigmoid map
    at the same size; ``spacing`` (row mm, column mm) of one pixel, or None.
    """
    mask = np.asarray(mask).astype(bool)
    area = int(np.count_nonzero(mask))
    components = int(label(mask, connectivity=CONNECTIVITY, return_num=True)[1])
    mean = None
    if probability is not None and area:
        mean = float(np.asarray(probability, np.float64)[mask].mean())
    return {
        "height": mask.shape[0],
        "width": mask.shape[1],
        "rib_area_px": area,
        "rib_area_mm2": area * spacing[0] * spacing[1] if spacing else None,
        "components": components,
        "mean_probability": mean,
    }
