"""Where a frame's image lies and how it is placed in the model's input, and back.

Screen captures of ultrasound hold the imaging sector on a black screen with a depth scale,
its dots, labels and marks burnt in. :func:`find_sector` finds the sector's bounding box:
the largest bright connected region once thin strokes (text, dotted scales, lines) are
opened away. nnU-Net crops to the bounding box of the nonzero pixels, which any label or dot
on the black screen widens; this box does not.

A :class:`Placement` says how one frame goes into the model's (height, width) input: its
``box`` (the part kept, the whole frame when not cropping) is resized to ``region``, the whole
input when stretching, or the largest part of it with the box's aspect ratio, centred and
padded with black (``keep_aspect``). :func:`to_model` applies it to a frame or mask;
:func:`to_native` undoes it for a probability map (bilinear, then zero outside the box), so
a mask thresholded at the frame's own size has smooth edges in the right place, or for a mask
(nearest).
"""

from dataclasses import dataclass

import cv2
import numpy as np

# Pixels brighter than this (of 255) may be imaging; the black of a screen capture is 0-3
# after JPEG, the darkest speckle of a sector above it.
BRIGHT = 6
# Opening removes strokes thinner than this share of the frame's smaller side (text, dots).
STROKE_SHARE = 1 / 48


@dataclass(frozen=True)
class Placement:
    """A frame of ``native`` (height, width), its ``box`` (top, left, bottom, right; bottom
    and right exclusive) resized to ``region`` (top, left, height, width) of the model's
    ``size`` (height, width); the rest of the input is black."""

    native: tuple
    box: tuple
    region: tuple
    size: tuple

    @property
    def stretched(self):
        """Whether the whole frame fills the whole input (no crop, no padding)."""
        height, width = self.native
        return self.box == (0, 0, height, width) and self.region == (0, 0, *self.size)

    def mirrored(self):
        """The placement of the frame mirrored left-right (``FrameSet.with_flips``)."""
        top, left, bottom, right = self.box
        r_top, r_left, r_height, r_width = self.region
        return Placement(
            self.native, (top, self.native[1] - right, bottom, self.native[1] - left),
            (r_top, self.size[1] - r_left - r_width, r_height, r_width), self.size,
        )

    def to_dict(self):
        return {"native": list(self.native), "box": list(self.box), "region": list(self.region)}


def place(native, size, box=None, keep_aspect=False):
    """The :class:`Placement` of a frame of ``native`` (height, width) in an input of ``size``:
    ``box`` (default: the whole frame) stretched over the input, or with ``keep_aspect`` the
    largest centred region of the box's aspect ratio."""
    height, width = (int(side) for side in native)
    size = tuple(int(side) for side in size)
    box = (0, 0, height, width) if box is None else tuple(int(v) for v in box)
    region = (0, 0, *size)
    if keep_aspect:
        box_height, box_width = box[2] - box[0], box[3] - box[1]
        scale = min(size[0] / box_height, size[1] / box_width)
        r_height = min(size[0], max(1, round(box_height * scale)))
        r_width = min(size[1], max(1, round(box_width * scale)))
        region = ((size[0] - r_height) // 2, (size[1] - r_width) // 2, r_height, r_width)
    return Placement((height, width), box, region, size)


def to_model(array, placement, interpolation):
    """``array`` (2-D, the frame's own size) as the model sees it: the box, resized with the
    OpenCV flag ``interpolation`` into its region, black around it."""
    top, left, bottom, right = placement.box
    r_top, r_left, r_height, r_width = placement.region
    resized = cv2.resize(np.ascontiguousarray(array[top:bottom, left:right]), (r_width, r_height),
                         interpolation=interpolation)
    if (r_height, r_width) == tuple(placement.size):
        return resized
    out = np.zeros(placement.size, array.dtype)
    out[r_top:r_top + r_height, r_left:r_left + r_width] = resized
    return out


def to_native(array, placement, interpolation=cv2.INTER_LINEAR):
    """A map at the model's size back at the frame's own size and position: its region
    resized to the box (bilinear for a probability map; ``cv2.INTER_NEAREST_EXACT`` for a
    mask), zero outside the box. A float map comes back float32, a mask in its own type."""
    top, left, bottom, right = placement.box
    r_top, r_left, r_height, r_width = placement.region
    array = np.asarray(array)
    dtype = np.float32 if array.dtype.kind == "f" else array.dtype
    part = np.ascontiguousarray(array[r_top:r_top + r_height, r_left:r_left + r_width], dtype=dtype)
    resized = cv2.resize(part, (right - left, bottom - top), interpolation=interpolation)
    if (top, left, bottom, right) == (0, 0, *placement.native):
        return resized
    out = np.zeros(placement.native, dtype)
    out[top:bottom, left:right] = resized
    return out


def find_sector(gray):
    """(top, left, bottom, right) of the imaging region of a 2-D uint8 frame.

    The bright pixels (above ``BRIGHT``, after a 3x3 median against JPEG noise) are closed
    (speckle gaps) and opened with a disc about ``STROKE_SHARE`` of the smaller side wide
    (strokes of text and scale dots vanish); the largest connected region left, grown back by
    the disc within the nonzero pixels, gives the box. A frame with no such region gives the
    whole frame. Mask pixels outside the box (a sector whose deepest rows are black) are
    left out, and ``load_frames`` says how many.
    """
    gray = np.asarray(gray)
    height, width = gray.shape
    whole = (0, 0, height, width)
    smooth = cv2.medianBlur(np.ascontiguousarray(gray), 3)
    bright = (smooth > BRIGHT).astype(np.uint8)
    side = max(3, int(round(min(height, width) * STROKE_SHARE)) | 1)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    solid = cv2.morphologyEx(cv2.morphologyEx(bright, cv2.MORPH_CLOSE, disc), cv2.MORPH_OPEN, disc)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(solid, connectivity=8)
    if count < 2:
        return whole
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # Grown back by the disc into every nonzero pixel: the sector's corners that the opening
    # rounded, and its darkest depths (attenuation, a rib's shadow) that are not bright.
    region = cv2.dilate((labels == largest).astype(np.uint8), disc) & (smooth > 0)
    rows = np.flatnonzero(region.any(axis=1))
    columns = np.flatnonzero(region.any(axis=0))
    if not rows.size:
        return whole
    return (int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1)


def nonzero_box(gray):
    """nnU-Net's crop: the bounding box of the nonzero pixels (the whole frame if none)."""
    rows = np.flatnonzero(np.asarray(gray).any(axis=1))
    columns = np.flatnonzero(np.asarray(gray).any(axis=0))
    if not rows.size:
        return (0, 0, *np.shape(gray))
    return (int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1)
