"""Segment new frames with a trained model: the Python API of prediction (no command line).

The frames go through the paper's input handling (gray, resized to the model's input with
nearest-neighbour as Keras' image loader did), or are cropped to the imaging sector and padded
as the model's training run did (``crop``, ``keep_aspect``: ``lungseg.data.crop``); lungseg's
models rescale 0-255 to 0-1 and copy gray to three channels inside the graph, so nothing else
is done here. The predicted probability map is mapped back to each frame's own size and
position (bilinear) and thresholded there, so mask edges follow the probabilities, not the
model's pixel grid.

    model = load_model("weights/demo_xunet/fold_1/model.keras")
    mask = segment(model, frame)          # (H, W) uint8, 0/1, for an (H, W) uint8 frame

``load_model`` lives in ``lungseg.model_files`` (the one model loader) and is importable from
here too. The ``lungseg-predict`` command is ``lungseg.commands.predict``; a run folder's fold
ensemble and flip TTA are ``lungseg.inference``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lungseg.config import CROPS
# Frames are resized exactly as for training (lungseg.data.frames.load_frames).
from lungseg.data.crop import find_sector, place, to_model, to_native
from lungseg.data.frames import INTERPOLATIONS, check_interpolation
from lungseg.data.io import to_gray_uint8
from lungseg.errors import ConfigError
from lungseg.model_files import input_size, load_model

if TYPE_CHECKING:
    import keras

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_THRESHOLD", "PREDICT_CHUNK_FRAMES", "check_batching", "check_threshold",
           "input_size", "load_model", "model_batch", "native_probabilities", "placements_of",
           "predict_probabilities", "segment", "segment_batch"]

DEFAULT_THRESHOLD = 0.5
# Frames per forward pass (the paper's batch size), for prediction, evaluation and export.
DEFAULT_BATCH_SIZE = 20
# Frames prepared and predicted per model.predict call: about 35-100 MB of 256 x 256 input.
PREDICT_CHUNK_FRAMES = 512


def check_threshold(threshold: float) -> None:
    """``ConfigError`` unless ``threshold`` is a probability."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")


def check_batching(batch_size: int, interpolation: str) -> None:
    """``ConfigError`` unless ``batch_size`` is at least 1 and ``interpolation`` is known."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    check_interpolation(interpolation)


def model_batch(
    frames: Sequence[np.ndarray],
    height: int,
    width: int,
    channels: int,
    interpolation: str = "nearest",
    first_index: int = 0,
    placements: Sequence | None = None,
) -> np.ndarray:
    """Frames as the model's input batch: uint8 (n, height, width, channels), values 0-255.

    Each frame is made 2-D uint8 gray as ``lungseg.data.io.read_image`` does (3- or
    4-channel arrays are taken as OpenCV's BGR/BGRA, 16-bit scaled to 0-255), resized (or
    placed as its ``placements`` entry says, ``lungseg.data.crop.to_model``), and copied to
    three channels when the model wants them. The batch stays uint8 (a quarter of float32's
    memory and transfer); Keras casts it to the model's float input exactly. A frame that
    cannot be converted raises ``DataError`` naming it as ``frame <index>``.
    """
    flag = INTERPOLATIONS[interpolation]
    batch = np.empty((len(frames), height, width, 1), np.uint8)
    for index, frame in enumerate(frames):
        gray = to_gray_uint8(np.asarray(frame), f"frame {first_index + index}")
        if placements is None:
            batch[index, :, :, 0] = cv2.resize(gray, (width, height), interpolation=flag)
        else:
            batch[index, :, :, 0] = to_model(gray, placements[index], flag)
    return np.repeat(batch, channels, axis=3) if channels == 3 else batch


def placements_of(
    frames: Sequence[np.ndarray], size: tuple[int, int], crop: str = "none", keep_aspect: bool = False
) -> list:
    """Where each frame goes in the model's input of ``size`` (``lungseg.data.crop.Placement``):
    the imaging sector's box with ``crop="auto"``, padded to the box's aspect with
    ``keep_aspect``, as ``lungseg.data.frames.load_frames`` placed the training frames."""
    if crop not in CROPS:
        raise ConfigError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    placements = []
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        box = find_sector(to_gray_uint8(frame, f"frame {index}")) if crop == "auto" else None
        placements.append(place(frame.shape[:2], size, box, keep_aspect))
    return placements


def predict_probabilities(
    model: keras.Model,
    frames: Iterable[np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
    interpolation: str = "nearest",
    placements: Sequence | None = None,
) -> np.ndarray:
    """Sigmoid outputs (n, h, w) float32 at the model's resolution (frames placed as
    ``placements`` say, else stretched over the input).

    Up to one batch of frames goes through ``predict_on_batch`` (no per-call tf.data set-up,
    which matters when frames come one at a time). More frames go through ``model.predict``
    in chunks of about ``PREDICT_CHUNK_FRAMES``: the very path a bare ``model.predict``
    takes, with its input pipelining and asynchronous device work, so the only extra cost
    is resizing the frames; chunking bounds memory on large folders.
    """
    check_batching(batch_size, interpolation)
    height, width, channels = input_size(model)
    frames = list(frames)
    if not frames:
        return np.zeros((0, *model.output_shape[1:3]), np.float32)
    chunk_size = max(batch_size, PREDICT_CHUNK_FRAMES // batch_size * batch_size)
    outputs = []
    for start in range(0, len(frames), chunk_size):
        chunk = frames[start : start + chunk_size]
        batch = model_batch(chunk, height, width, channels, interpolation, first_index=start,
                            placements=None if placements is None
                            else placements[start : start + chunk_size])
        if len(chunk) <= batch_size:
            output = model.predict_on_batch(batch)
        else:
            output = model.predict(batch, batch_size=batch_size, verbose=0)
        outputs.append(np.asarray(output)[..., 0])
    return np.concatenate(outputs).astype(np.float32, copy=False)


def native_probabilities(
    model: keras.Model,
    frames: Iterable[np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
    interpolation: str = "nearest",
    crop: str = "none",
    keep_aspect: bool = False,
) -> list[np.ndarray]:
    """Probability maps at each frame's own size: a list of (H_i, W_i) float32 arrays.

    Each frame is placed in the model's input (:func:`placements_of`), predicted, and its map
    mapped back to the frame's size and position with bilinear interpolation
    (``lungseg.data.crop.to_native``; zero outside a crop box).
    """
    frames = list(frames)
    if crop == "auto":  # the sector is found on the gray frame: made once, not again for the batch
        frames = [to_gray_uint8(np.asarray(frame), f"frame {index}") for index, frame in enumerate(frames)]
    height, width, _ = input_size(model)
    placements = placements_of(frames, (height, width), crop, keep_aspect)
    probabilities = predict_probabilities(model, frames, batch_size, interpolation, placements)
    return [to_native(probability, placement)
            for probability, placement in zip(probabilities, placements)]


def segment_batch(
    model: keras.Model,
    frames: Iterable[np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
    interpolation: str = "nearest",
    crop: str = "none",
    keep_aspect: bool = False,
) -> list[np.ndarray]:
    """Masks for many frames: a list of (H_i, W_i) uint8 arrays of 0/1, one per frame.

    Frames may differ in size; each mask has its frame's size. A pixel is foreground when
    its probability, resized to the frame's own size (:func:`native_probabilities`),
    exceeds ``threshold`` (``>``, as Keras' ``binary_accuracy``).
    """
    check_threshold(threshold)
    return [(probability > threshold).astype(np.uint8) for probability in
            native_probabilities(model, frames, batch_size, interpolation, crop, keep_aspect)]


def segment(
    model: keras.Model,
    frame: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    interpolation: str = "nearest",
    crop: str = "none",
    keep_aspect: bool = False,
) -> np.ndarray:
    """Mask of one frame ((H, W) or (H, W, C), uint8 or uint16): (H, W) uint8 of 0/1."""
    return segment_batch(model, [frame], 1, threshold, interpolation, crop, keep_aspect)[0]
