"""Reading masks as 0/1 arrays from their raw values, and one summary per set of masks.

A mask is binarised from the values it stores, before any scaling: a 16-bit mask of 0/1 is
the 0/1 mask, whatever its bit depth. Channels: gray as it is; colour by its brightest
channel (any colour marks the target); a palette PNG by its palette indices; RGBA by its
alpha when the colour is uniform (an alpha-only mask), by its colour when alpha is, else by
colour times alpha.

The mask's *level* is its foreground value: the largest value that at least
``LEVEL_SHARE`` of its nonzero pixels reach (and ``STRAY_PIXELS`` of them, or half of a tiny
mask's), so that a few stray pixels above it (one 255 in a 0/1 mask) neither set the
threshold nor vanish (they count as foreground). A pixel is
foreground above ``threshold`` times the level (half, by default). Soft values between 0
and the level (anti-aliased or compressed edges) are thresholded; a mask with many values
in the middle band is refused unless a threshold is given. A *label map* (a few distinct
levels, as 0/1/2 or 0/128/255) reads every nonzero label as foreground.

:func:`read_mask` reads one file; :class:`MaskStats` records what it found, and
:func:`summarize_masks` turns the stats of one set into a few lines (one per kind of
finding, never one per file), and refuses a set whose masks are all empty.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lungseg.config import check_reading
from lungseg.data.io import decode_image
from lungseg.errors import DataError

DEFAULT_THRESHOLD = 0.5  # of the mask's level: half, as masks have always been read
LEVEL_SHARE = 0.01  # share of the nonzero pixels that must reach the level
STRAY_PIXELS = 10  # ... and how many of them (or half the nonzero pixels of a tiny mask)
SOFT_TOLERANCE = 0.02  # share of pixels allowed in the middle band without --mask-threshold
LABEL_SHARE = 0.05  # share of the nonzero pixels a label holds
SMALL_LABELS = 16  # labels 1..16 are label maps at any count; larger values only 2-3 of them


@dataclass(frozen=True)
class MaskStats:
    """What reading one mask found: pixel counts of foreground, soft (0 < value < level)
    and stray (value > level) pixels, the level and threshold, and the labels of a label map."""

    path: str
    pixels: int
    foreground: int
    level: int
    threshold: float
    soft: int = 0
    stray: int = 0
    labels: tuple = ()


def read_mask(path, threshold=None):
    """A mask file as a 2-D uint8 array of 0 and 1 (:func:`read_mask_stats` without stats)."""
    return read_mask_stats(path, threshold)[0]


def read_mask_stats(path, threshold=None):
    """``(mask, MaskStats)`` of a mask file; ``threshold`` as in :func:`binarize`."""
    return binarize(raw_mask_values(path), path, threshold)


def raw_mask_values(path):
    """A mask file's values as stored, one channel (see the module's description)."""
    path = Path(path)
    array = decode_image(path)
    if path.suffix.lower() == ".png" and array.ndim == 3 and _is_palette_png(path):
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: unsupported mask shape {array.shape}")
    colour = array[:, :, :3].max(axis=2) if array.shape[2] > 1 else array[:, :, 0]
    if array.shape[2] != 4:
        return colour
    alpha = array[:, :, 3]
    if colour.min() == colour.max():
        return alpha
    if alpha.min() == alpha.max():
        return colour
    top = np.iinfo(array.dtype).max
    return (colour.astype(np.float64) * alpha / top).round().astype(array.dtype)


def _is_palette_png(path):
    data = Path(path).read_bytes()[:26]
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == 26 and data[25] == 3


def binarize(raw, path="<array>", threshold=None):
    """``(mask, MaskStats)``: ``raw`` (2-D, any integer depth) thresholded at its level.

    ``threshold`` is the share of the level above which a pixel is foreground; None means
    half, and a mask with more than ``SOFT_TOLERANCE`` of its pixels between a quarter and
    three quarters of its level (not a mask but a probability map or a photograph) raises
    ``DataError``; a threshold given accepts it.
    """
    check_reading(mask_threshold=threshold)
    share = DEFAULT_THRESHOLD if threshold is None else threshold
    raw = np.asarray(raw)
    nonzero = raw[raw > 0]
    if not nonzero.size:
        return np.zeros(raw.shape, np.uint8), MaskStats(str(path), raw.size, 0, 0, 0.0)
    values, counts = np.unique(nonzero, return_counts=True)
    reached = np.cumsum(counts[::-1])[::-1]  # pixels at or above each value
    enough = max(LEVEL_SHARE * nonzero.size, min(STRAY_PIXELS, nonzero.size / 2))
    level = int(values[np.nonzero(reached >= enough)[0][-1]])
    labels = _labels(raw, values, counts, nonzero.size)
    if labels:
        mask = (raw > 0).astype(np.uint8)
        return mask, MaskStats(str(path), raw.size, int(nonzero.size), level, 0.0, labels=labels)
    cut = share * level
    ambiguous = np.count_nonzero((raw > level / 4) & (raw < 3 * level / 4))
    if threshold is None and ambiguous > SOFT_TOLERANCE * raw.size:
        raise DataError(
            f"{path}: mask is not binary: {ambiguous / raw.size:.1%} of pixels lie between a "
            f"quarter and three quarters of its level {level} (thresholded at {cut:g}, half "
            "the level); give --mask-threshold to threshold it anyway"
        )
    mask = (raw > cut).astype(np.uint8)
    soft = int(np.count_nonzero(nonzero < level))
    stray = int(np.count_nonzero(nonzero > level))
    return mask, MaskStats(str(path), raw.size, int(mask.sum()), level, cut, soft, stray)


def _labels(raw, values, counts, total):
    """The labels of a label map (its distinct values), or () when it is not one: two or
    more nonzero values each held by ``LABEL_SHARE`` of the nonzero pixels, and either small
    integers (1 to ``SMALL_LABELS``) or two or three levels whose lower ones fill regions of
    their own (an anti-aliased edge of one level is a thin rim with no inside)."""
    held = values[counts >= LABEL_SHARE * total]
    if len(held) < 2 or len(values) > SMALL_LABELS:
        return ()
    if values.max() > SMALL_LABELS:
        if len(values) > 3:
            return ()
        cross = np.ones((3, 3), np.uint8)
        for value in values[:-1]:
            inside = cv2.erode((raw == value).astype(np.uint8), cross, borderValue=0)
            if np.count_nonzero(inside) < LABEL_SHARE * total:
                return ()
    return (0, *(int(v) for v in values))


def summarize_masks(stats, folder, threshold=None):
    """Warning lines on a set's masks (soft edges, stray values, label maps: one line per
    kind, with the files affected and the share of pixels); ``DataError`` when every mask
    is empty."""
    stats = list(stats)
    if not stats:
        return []
    if not any(s.foreground for s in stats):
        peak = max(s.level for s in stats)
        raise DataError(
            f"{folder}: all {len(stats)} masks are empty (no foreground pixel"
            f"{'' if peak else ', every value 0'}): nothing to learn or score; check the "
            "masks, or --target for a folder of several targets"
        )
    n = len(stats)
    pixels = sum(s.pixels for s in stats)
    how = ("half their level" if threshold is None
           else f"{threshold:g} of their level (--mask-threshold)")
    lines = []
    soft = [s for s in stats if s.soft]
    if soft:
        share = sum(s.soft for s in soft) / pixels
        lines.append(
            f"{folder}: {len(soft)} of {n} masks are not two-valued (anti-aliased or compressed "
            f"edges, {share:.2%} of all mask pixels between 0 and the mask's level, e.g. "
            f"{Path(soft[0].path).name}): thresholded at {how}"
            + ("; --mask-threshold changes it" if threshold is None else "")
        )
    stray = [s for s in stats if s.stray]
    if stray:
        lines.append(
            f"{folder}: {len(stray)} of {n} masks hold a few values above their level "
            f"({sum(s.stray for s in stray)} pixels, e.g. {Path(stray[0].path).name}: level "
            f"{stray[0].level}): read as foreground"
        )
    maps = [s for s in stats if s.labels]
    if maps:
        lines.append(
            f"{folder}: {len(maps)} of {n} masks look like label maps (values "
            f"{', '.join(map(str, maps[0].labels))} in {Path(maps[0].path).name}): every "
            "nonzero label read as foreground; give one mask per target (--target NAME for "
            "masks/NAME/)"
        )
    return lines
