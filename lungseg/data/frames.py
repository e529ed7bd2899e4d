"""Decoded, resized frames and masks in memory, and the paper's training-set sizes.

``load_frames`` reads every pair once, checks it and places it in the network's input
(resized, or cropped to the imaging sector and padded, as :class:`Reading` says); the resulting
``FrameSet`` of uint8 arrays is the cache that every epoch, fold and evaluation reuses, so no
file is decoded twice.
"""

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from lungseg import config
from lungseg.config import ALL_FRAMES, check_reading
from lungseg.data.crop import find_sector, place, to_model
from lungseg.data.io import describe_depths, read_frame
from lungseg.data.masks import read_mask_stats, summarize_masks
from lungseg.data.pairs import SUBJECT_PREFIX
from lungseg.progress import progress as progress_bar
from lungseg.errors import ConfigError, DataError

# Frame resampling when resizing: config.INTERPOLATIONS' names with their OpenCV flags.
INTERPOLATIONS = {name: getattr(cv2, flag) for name, flag in config.INTERPOLATIONS.items()}
FLIP_SUFFIX = "_flipped"  # the authors' name for a mirror image: img_lung_pos2_5_flipped.tif
# The paper's frame numbering, lung_pos<P>_<n> (every 5th frame of a clip), and its sets: per
# probe position the 200-frame set holds n mod 100 in 5, 10, ..., 50; the 300 frames of the
# 600-frame experiment add 55..75 (docs/paper.md, "Which frames"). Phantoms of several subjects
# are numbered alike per subject and position: lung_subj<k>_pos<P>_<n>.
PAPER_FRAME_NAME = re.compile(
    rf"^lung_(?:(?P<subject>{SUBJECT_PREFIX}\d+)_)?pos(?P<position>\d+)_(?P<frame>\d+)$"
)
PAPER_FRAME_STEP = 5
PAPER_SETS = ((200, 50), (300, 75))  # (originals, largest n mod 100 in that set)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """How frames and masks are read and placed (RunConfig's fields of the same names).

    ``mask_threshold``: share of a mask's level above which a pixel is foreground (None:
    half, refusing soft masks; ``lungseg.data.masks``); ``max_value``: the value of 16-bit
    frames that becomes 255 (None: stated or inferred, ``lungseg.data.io.read_frame``);
    ``crop``: ``"none"`` or ``"auto"`` (the imaging sector, ``lungseg.data.crop``);
    ``keep_aspect``: pad to the input's shape instead of stretching.
    """

    mask_threshold: float = None
    max_value: int = None
    crop: str = "none"
    keep_aspect: bool = False

    @classmethod
    def of(cls, config):
        """The reading a ``RunConfig`` asks for (older configs lack the fields: defaults)."""
        return cls(**{name: getattr(config, name, default) for name, default in
                      (("mask_threshold", None), ("max_value", None), ("crop", "none"),
                       ("keep_aspect", False))})

    def check(self):
        check_reading(self.crop, self.mask_threshold, self.max_value)
        return self

    def placement(self, gray, size):
        """The :class:`lungseg.data.crop.Placement` of the frame ``gray`` in ``size``."""
        box = find_sector(gray) if self.crop == "auto" else None
        return place(gray.shape, size, box, self.keep_aspect)


@dataclass
class FrameSet:
    """Frames and masks of one data set, in memory.

    ``images`` are uint8 ``[N, H, W, 1]`` with values 0-255, ``masks`` uint8 ``[N, H, W, 1]``
    of 0 and 1; ``names`` and ``groups`` give each frame's name and split group.
    ``native_masks``, when loaded (``load_frames(..., native=True)``), holds each mask at its
    frame's own size (2-D uint8 0/1), for metrics in native pixels; ``placements`` (from
    ``load_frames``) how each frame was placed in the input (its crop box and padding,
    :class:`lungseg.data.crop.Placement`), so that predictions map back to the frame.
    ``depth`` and ``notes`` say what reading found (bit depth; soft masks, crops).
    """

    names: list
    groups: list
    images: np.ndarray
    masks: np.ndarray
    native_masks: list = None
    placements: list = None
    depth: str = None
    notes: tuple = ()

    def __post_init__(self):
        self.names = list(self.names)
        self.groups = list(self.groups)
        n = len(self.names)
        if len(self.groups) != n or len(self.images) != n or len(self.masks) != n:
            raise ValueError(
                f"FrameSet needs as many groups, images and masks as names ({n}); got "
                f"{len(self.groups)}, {len(self.images)}, {len(self.masks)}"
            )
        if self.images.shape != self.masks.shape or self.images.ndim != 4:
            raise ValueError(
                f"images and masks must both be [N, H, W, 1]; got {self.images.shape} and "
                f"{self.masks.shape}"
            )

    def __len__(self):
        return len(self.names)

    @property
    def image_size(self):
        """(height, width) of every frame."""
        return tuple(self.images.shape[1:3])

    def subset(self, names):
        """The frames called ``names``, in that order; ``DataError`` lists unknown names."""
        position = {name: index for index, name in enumerate(self.names)}
        unknown = [name for name in names if name not in position]
        if unknown:
            raise DataError([f"{name}: no frame of that name in this data set" for name in unknown])
        return self._select([position[name] for name in names])

    def take(self, n):
        """The first ``n`` frames."""
        return self._select(list(range(min(n, len(self)))))

    def with_flips(self):
        """These frames followed by their horizontal mirror images, ``<name>_flipped``.

        The paper doubled its training data this way before training (400 = 200 + flips). A
        mirror image keeps its original's group, so grouped splits never separate the two.
        """
        return FrameSet(
            names=self.names + [name + FLIP_SUFFIX for name in self.names],
            groups=self.groups + self.groups,
            images=np.concatenate([self.images, self.images[:, :, ::-1]]),
            masks=np.concatenate([self.masks, self.masks[:, :, ::-1]]),
            native_masks=None if self.native_masks is None
            else self.native_masks + [mask[:, ::-1] for mask in self.native_masks],
            placements=None if self.placements is None
            else self.placements + [p.mirrored() for p in self.placements],
            depth=self.depth, notes=self.notes,
        )

    def _select(self, indices):
        return FrameSet(
            names=[self.names[i] for i in indices],
            groups=[self.groups[i] for i in indices],
            images=self.images[indices],
            masks=self.masks[indices],
            native_masks=None if self.native_masks is None
            else [self.native_masks[i] for i in indices],
            placements=None if self.placements is None else [self.placements[i] for i in indices],
            depth=self.depth, notes=self.notes,
        )


def check_interpolation(interpolation):
    """``ConfigError`` unless ``interpolation`` is one of ``INTERPOLATIONS``' names."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"unknown interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}"
        )


def load_frames(pairs, image_size, interpolation="nearest", progress=False, native=False,
                reading=Reading()):
    """Read, check and place every pair into a ``FrameSet``.

    ``image_size`` is ``(height, width)``. Each frame (cropped to its imaging sector with
    ``reading.crop="auto"``) is resized with ``interpolation`` (``"nearest"``, as Keras'
    loader did in the paper, ``"area"`` or ``"bilinear"``) to the input, or into the largest
    centred part of it with its aspect ratio (``reading.keep_aspect``), masks with nearest
    so they stay binary. Every problem (unreadable, empty or corrupt file, frame and mask of
    different sizes, mask that is not binary, every mask empty) is collected and raised
    together as one ``DataError``; what is worth knowing but no error (soft mask edges,
    16-bit frames scaled by an inferred range, mask pixels cropped away) is logged as one
    warning line per kind for the whole set, and kept in ``FrameSet.notes``.
    ``progress=True`` draws a progress bar on stderr. ``native=True`` also keeps every mask
    at its frame's own size (``FrameSet.native_masks``).
    """
    height, width = _check_size(image_size)
    check_interpolation(interpolation)
    reading = reading.check()
    pairs = list(pairs)
    if not pairs:
        raise DataError("no image/mask pairs to load")
    images = np.zeros((len(pairs), height, width, 1), np.uint8)
    masks = np.zeros((len(pairs), height, width, 1), np.uint8)
    native_masks = [None] * len(pairs)
    placements = [None] * len(pairs)
    depths, stats, cropped = [None] * len(pairs), [None] * len(pairs), [0] * len(pairs)

    def load(index):
        pair = pairs[index]
        problems = []
        image = mask = None
        try:
            image, depths[index] = read_frame(pair.image, reading.max_value)
        except DataError as error:
            problems += error.problems
        try:
            mask, stats[index] = read_mask_stats(pair.mask, reading.mask_threshold)
        except DataError as error:
            problems += error.problems
        if image is not None and mask is not None:
            if image.shape != mask.shape:
                problems.append(
                    f"{pair.mask}: size {_size(mask)} (height x width) differs from its "
                    f"image {pair.image} ({_size(image)})"
                )
            else:
                placement = placements[index] = reading.placement(image, (height, width))
                images[index, :, :, 0] = to_model(image, placement, INTERPOLATIONS[interpolation])
                masks[index, :, :, 0] = to_model(mask, placement, cv2.INTER_NEAREST_EXACT)
                top, left, bottom, right = placement.box
                if placement.box != (0, 0, *mask.shape):  # mask pixels the crop left out
                    cropped[index] = int(mask.sum()) - int(mask[top:bottom, left:right].sum())
                if native:
                    native_masks[index] = mask
        return problems

    # OpenCV decodes without holding the GIL, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(load, range(len(pairs)))
        problems = [
            line
            for lines in progress_bar(results, len(pairs), "loading frames", enabled=progress)
            for line in lines
        ]
    notes = []
    if not problems:
        try:
            notes = summarize_masks(stats, pairs[0].mask.parent, reading.mask_threshold)
        except DataError as error:
            problems += error.problems
    if problems:
        raise DataError(problems)
    depth, depth_note = describe_depths(depths, pairs[0].image.parent)
    notes += [depth_note] if depth_note else []
    if any(cropped):
        lost = sum(cropped) / max(1, sum(s.foreground for s in stats))
        count = sum(1 for c in cropped if c)
        notes.append(f"{pairs[0].mask.parent}: {count} of {len(pairs)} masks have foreground "
                     f"outside the crop box ({lost:.2%} of all foreground pixels), left out")
    for note in notes:
        logger.warning("%s", note)
    return FrameSet(
        names=[pair.name for pair in pairs],
        groups=[pair.group for pair in pairs],
        images=images,
        masks=masks,
        native_masks=native_masks if native else None,
        placements=placements,
        depth=depth,
        notes=tuple(notes),
    )


def select_lus_frames(frames, n_frames, flips=True):
    """The paper's LUS training sets: ``(FrameSet, rule)``, ``rule`` one sentence for the logs.

    With ``flips`` (the paper's "400 LUS" and "600 LUS") ``n_frames / 2`` originals and their
    mirror images, else ``n_frames`` originals ("200 LUS"); ``"all"``: every frame. When every
    name follows the paper's numbering (``lung_pos<P>_<n>``, or ``lung_subj<k>_pos<P>_<n>`` for
    phantoms of several subjects) the originals come from the paper's set for that size (up to
    200 originals: n mod 100 in 5..50; more: 5..75), an equal share per probe position (of each
    subject) in frame-number order when fewer are wanted than the set holds; otherwise the
    first ones in name order. ``DataError`` says how many frames the chosen rule misses.
    """
    if n_frames == ALL_FRAMES:
        rule = f"all {len(frames)} frames"
        return (frames.with_flips(), f"{rule} and their mirror images") if flips else (frames, rule)
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ConfigError(f"n_frames must be a positive integer or {ALL_FRAMES!r}, got {n_frames!r}")
    if flips and n_frames % 2:
        raise ConfigError(f"n_frames must be even with flips (half originals), got {n_frames}")
    originals = n_frames // 2 if flips else n_frames
    wanted = f"{n_frames} training frames{' with flips' if flips else ''}"
    paper = _paper_selection(frames, originals, wanted)
    if paper is None:
        if len(frames) < originals:
            raise DataError(
                f"{wanted} need {originals} original frames, but the data set has only "
                f"{len(frames)}"
            )
        chosen = frames.take(originals)
        rule = (f"all {len(frames)} frames" if originals == len(frames) else
                f"the first {originals} of {len(frames)} frames in name order (names not all lung_pos<P>_<n>)")
    else:
        chosen, rule = paper
    if flips:
        return chosen.with_flips(), f"{rule}, and their mirror images"
    return chosen, rule


def unused_frames(frames, n_frames, flips=True):
    """How many of ``frames`` ``select_lus_frames`` leaves out where no rule of the paper
    chooses them (names not numbered as the paper's): the first ones in name order only."""
    if n_frames == ALL_FRAMES:
        return 0
    originals = n_frames // 2 if flips else n_frames
    if _paper_selection(frames, originals, "") is not None:
        return 0
    return max(0, len(frames) - originals)


def _paper_selection(frames, originals, wanted):
    """(FrameSet, rule) from the paper's set, or None when the names are numbered otherwise."""
    matches = [PAPER_FRAME_NAME.match(name) for name in frames.names]
    if not matches or not all(matches):
        return None
    set_size, last = next(
        ((size, last) for size, last in PAPER_SETS if originals <= size), PAPER_SETS[-1]
    )
    by_position = {}
    for index, match in enumerate(matches):
        number = int(match["frame"])
        if number % PAPER_FRAME_STEP == 0 and PAPER_FRAME_STEP <= number % 100 <= last:
            sequence = (match["subject"] or "", int(match["position"]))  # per subject, if any
            by_position.setdefault(sequence, []).append((number, index))
    description = f"the paper's {set_size}-frame set (lung_pos<P>_<n>, n mod 100 in 5..{last})"
    available = sum(len(found) for found in by_position.values())
    if available < originals:
        raise DataError(
            f"{wanted} need {originals} original frames from {description}, but the data set "
            f"holds {available} of them: {originals - available} missing"
        )
    positions = sorted(by_position)
    shares = _equal_shares([len(by_position[p]) for p in positions], originals)
    indices = sorted(
        index
        for position, share in zip(positions, shares)
        for _, index in sorted(by_position[position])[:share]
    )
    counts = ", ".join(
        f"{subject}_pos{p} {share}" if subject else f"pos{p} {share}"
        for (subject, p), share in zip(positions, shares)
    )
    if originals == available:
        return frames._select(indices), f"{description}: {counts}"
    return (
        frames._select(indices),
        f"{originals} frames numbered as {description}, the lowest frame numbers of each "
        f"probe position: {counts}",
    )


def _equal_shares(counts, total):
    """Split ``total`` as evenly as ``counts`` allow (earlier entries get the remainder)."""
    shares = [0] * len(counts)
    while total:
        for i, count in enumerate(counts):
            if total and shares[i] < count:
                shares[i] += 1
                total -= 1
    return shares


def _check_size(image_size):
    try:
        height, width = (int(side) for side in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"image_size must be (height, width), got {image_size!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return height, width


def _size(array):
    return f"{array.shape[0]} x {array.shape[1]}"
