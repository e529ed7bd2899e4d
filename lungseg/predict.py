"""Segment new frames with a trained model: a small Python API and the ``lungseg-predict`` command.

The frames go through the paper's input handling (gray, resized to the model's input with
nearest-neighbour as Keras' image loader did), or are cropped to the imaging sector and padded
as the model's training run did (``crop``, ``keep_aspect``: ``lungseg.data.crop``); lungseg's
models rescale 0-255 to 0-1 and copy gray to three channels inside the graph, so nothing else
is done here. The predicted probability map is mapped back to each frame's own size and
position (bilinear) and thresholded there, so mask edges follow the probabilities, not the
model's pixel grid.

    model = load_model("weights/demo_xunet/fold_1/model.keras")
    mask = segment(model, frame)          # (H, W) uint8, 0/1, for an (H, W) uint8 frame

Command line::

    lungseg-predict MODEL_OR_RUN INPUT [--out DIR] [--tta flip] [--fold K] [--min-size PX]
                    [--keep-largest N] [--save-probabilities] [--spacing MM] [--threshold T] ...

MODEL_OR_RUN is a ``.keras`` model or a run folder, whose finished fold models are averaged
(``lungseg.inference.ensemble``). INPUT is a frame, a multi-page TIFF, a DICOM file, a video,
or a folder searched recursively for them (``lungseg.data.sources``). For each frame
``<name>_mask.png`` (0/255) and ``<name>_overlay.png`` are written to ``--out`` (by default
``<INPUT stem>_masks/`` beside INPUT) in the sub-folder mirroring INPUT's; the frames of a
multi-frame file are named ``<stem>_0001`` ...; a video gets ``<stem>_overlay.<ext>``, a video
of overlays. ``predictions.csv`` has one row per frame. ``--out`` is written whole: into a
temporary folder beside it, renamed into place when complete (an earlier predictions folder
there is then replaced; a folder of other files, an input or a run folder is refused).
Frames are resized as the model's training run did (``interpolation`` in the
``config.json`` of its run folder), nearest-neighbour when there is none, unless
``--interpolation`` is given. See ``docs/inference.md``.
Exit status: 0 all files segmented; 1 some files of a folder could not be read or are of
an unsupported type and were skipped (each named on stderr, the others were written); 2
nothing was done because the model, the input, the options or the output folder are
unusable, or no file was readable; 130 interrupted (143 SIGTERM). Other exceptions are bugs
and show their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

# Frames are resized exactly as for training (lungseg.data.frames.load_frames).
from lungseg.data.crop import find_sector, place, to_model, to_native
from lungseg.data.frames import INTERPOLATIONS, check_interpolation
from lungseg.data.io import to_gray_uint8, write_image
from lungseg.data.sources import SOURCE_SUFFIXES, find_sources, is_source
from lungseg.cli import run_main
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.config import CROPS, TTA_CHOICES
from lungseg.progress import Progress

if TYPE_CHECKING:
    import keras

    from lungseg.config import RunConfig
    from lungseg.runs import RunFolder

    from lungseg.data.sources import Source

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 20
# Frames prepared and predicted per model.predict call: about 35-100 MB of 256 x 256 input.
PREDICT_CHUNK_FRAMES = 512
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
PROBABILITY_SUFFIX = "_prob.png"
PREDICTIONS_CSV = "predictions.csv"


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` (or legacy ``.h5``) model with Keras' safe mode on.

    Safe mode refuses models whose ``Lambda`` layers carry Python code, since loading them
    could run arbitrary code; lungseg's own models have no ``Lambda`` layers. There is
    deliberately no switch to turn it off. ``compile=False`` (the default) skips restoring
    the optimizer, which inference does not need.

    Raises ``LungsegError`` naming the file when it is missing, is not a Keras model, holds
    a ``Lambda`` layer, or does not take (height, width, 1 or 3) frames.
    """
    path = Path(path)
    if not path.exists():
        raise LungsegError(f"{path}: model file does not exist")
    if path.is_dir():
        raise LungsegError(
            f"{path}: is a folder, not a .keras model file "
            "(Keras 3 does not load TensorFlow SavedModel folders)"
        )
    # Keras (and TensorFlow) load here, not when this module is imported: lungseg-predict's
    # --help and option errors answer at once. Importing lungseg.losses registers the Dice
    # loss and metrics that compiled lungseg models name.
    import keras

    from lungseg import inference, losses  # noqa: F401  (register FlipLeftRight and the Dice loss)

    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, OSError, KeyError, TypeError...
        if "Lambda" in str(error):
            raise LungsegError(
                f"{path}: refused to load: the model holds a Lambda layer with Python code, "
                "which safe mode does not load because it could run arbitrary code; "
                "rebuild the model without Lambda layers"
            ) from error
        raise LungsegError(f"{path}: not a loadable Keras model ({_first_line(error)})") from error
    input_size(model, source=path)
    return model


def model_files(
    path: str | Path, folds: Iterable[str] | None = None, allow_partial: bool = False
) -> tuple[RunFolder | None, list[str], list[Path]]:
    """The run folder (or None), fold names and model files that ``path`` stands for: a run
    folder's folds (or only ``folds``), or one model file. Raises ``LungsegError`` naming what
    is missing; a run with unfinished folds only with ``allow_partial`` (its finished ones).
    Needs no Keras: lungseg-predict checks the model path before TensorFlow starts (seconds),
    as it does its options.
    """
    from lungseg.runs import CONFIG, RunFolder

    path = Path(path)
    if not path.exists():
        if path.suffix in (".keras", ".h5"):
            raise LungsegError(f"{path}: model file does not exist")
        raise LungsegError(f"{path}: does not exist (give a run folder or a .keras model file)")
    if not path.is_dir():
        return None, [], [path]
    if not (path / CONFIG).is_file():
        raise DataError(f"{path}: not a run folder (no {CONFIG}) nor a .keras model file")
    run = RunFolder.open(path)
    chosen = run.check_finished(allow_partial, list(folds or []))
    if run.missing_folds() and not folds:
        from lungseg.console import warn

        warn(f"{path}: unfinished run: using {len(chosen)} of {run.config.folds} folds "
             f"({', '.join(run.missing_folds())} missing; --allow-partial)")
    return run, chosen, [run.model_path(fold) for fold in chosen]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().strip("\"'")
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def input_size(model: keras.Model, source: str | Path | None = None) -> tuple[int, int, int]:
    """(height, width, channels) of the frames ``model`` takes; ``LungsegError`` if unusable."""
    source = source or f"model {model.name!r}"
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4:
        raise LungsegError(
            f"{source}: expected one image input of shape (batch, height, width, channels), "
            f"got {model.input_shape}"
        )
    _, height, width, channels = shape
    if height is None or width is None or channels not in (1, 3):
        raise LungsegError(
            f"{source}: model input must have a fixed height and width and 1 or 3 channels, "
            f"got {shape[1:]}"
        )
    output = model.output_shape
    if isinstance(output, list) or len(output) != 4 or output[-1] != 1:
        raise LungsegError(f"{source}: expected one mask output (batch, h, w, 1), got {output}")
    return height, width, channels


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")


def _check_batching(batch_size: int, interpolation: str) -> None:
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
    _check_batching(batch_size, interpolation)
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
    _check_threshold(threshold)
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


# --- command line ------------------------------------------------------------------------


def _frame_files(input_path: Path) -> tuple[list[Path], list[Path]]:
    """(frame files, files of other types) named by INPUT: the file itself, or every frame,
    DICOM and video file below a folder (recursively, sorted by path)."""
    if not input_path.exists():
        raise DataError(f"{input_path}: input does not exist")
    if input_path.is_file():
        if not is_source(input_path):
            raise DataError(f"{input_path}: unsupported file type (expected a frame "
                            f"({', '.join(SOURCE_SUFFIXES)}) or a DICOM file)")
        return [input_path], []
    files, others = find_sources(input_path)
    if not files:
        raise DataError(f"{input_path}: folder holds no frames ({', '.join(SOURCE_SUFFIXES)}, "
                        "DICOM), in it or below it")
    stems = {}
    for path in files:
        key = (path.parent, path.stem)
        if key in stems:
            raise DataError(
                f"{path}: same name as {stems[key].name}; their masks would overwrite "
                "each other (rename one)"
            )
        stems[key] = path
    return files, others


def default_output_folder(input_path: str | Path) -> Path:
    """``<INPUT stem>_masks/`` beside INPUT: ``scans/a.tif`` -> ``scans/a_masks/``."""
    input_path = Path(input_path)
    return input_path.parent / f"{input_path.stem}_masks"


def _check_output_folder(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Fail before any work when ``out`` cannot be written whole (``lungseg.files``): a file,
    not writable, a folder that is not a predictions folder, inside an input or a run folder."""
    from lungseg.files import check_output_folder

    check_output_folder(out, "predictions", PREDICTIONS_CSV, inputs)


def _write(path: Path, image: np.ndarray) -> None:
    try:
        write_image(path, image)
    except OSError as error:
        raise LungsegError(f"{path}: cannot write ({error.strerror or error})") from error


def _write_outputs(
    folder: Path,
    base: str,
    frame: np.ndarray,
    mask: np.ndarray,
    probability: np.ndarray | None = None,
    overlay: bool = True,
) -> None:
    """``<base>_mask.png`` (0/255), ``<base>_overlay.png`` and ``<base>_prob.png``, atomically."""
    from lungseg.figures import blend_mask  # matplotlib: only once there is a mask to draw

    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{base}{MASK_SUFFIX}", mask * np.uint8(255))
    if overlay:
        _write(folder / f"{base}{OVERLAY_SUFFIX}", cv2.cvtColor(blend_mask(frame, mask), cv2.COLOR_RGB2BGR))
    if probability is not None:
        _write(folder / f"{base}{PROBABILITY_SUFFIX}",
               np.round(np.clip(probability, 0, 1) * 65535).astype(np.uint16))


VIDEO_CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


class OverlayVideo:
    """The frames of a video with their masks tinted, written as they come, as a video of the
    input's kind; atomically: the file appears when the context closes without error."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path, self.fps, self.writer = Path(path), fps, None

    def __enter__(self) -> "OverlayVideo":
        from lungseg.files import atomic_path

        self._atomic = atomic_path(self.path)
        self.tmp = self._atomic.__enter__()
        return self

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        from lungseg.figures import blend_mask

        if self.writer is None:
            height, width = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()]),
                                          self.fps or 25.0, (width, height), True)
            if not self.writer.isOpened():
                raise LungsegError(f"{self.path}: cannot write the overlay video (no {self.path.suffix} encoder)")
        self.writer.write(cv2.cvtColor(blend_mask(frame, mask), cv2.COLOR_RGB2BGR))

    def __exit__(self, *exc_info: object) -> bool | None:
        if self.writer is not None:
            self.writer.release()
        return self._atomic.__exit__(*exc_info)


def spacing_option(text: str) -> tuple[float, float]:
    """``MM`` (square pixels) or ``ROWxCOL`` in mm, e.g. ``0.2`` or ``0.2x0.3``."""
    try:
        values = tuple(float(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MM or ROWxCOL in mm, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite MM or ROWxCOL in mm, got {text!r}")
    return values


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """Options prediction and evaluation share: ensemble, TTA, post-processing."""
    from lungseg.cli import positive_int

    parser.add_argument("--fold", type=positive_int, action="append", metavar="K",
                        help="with a run folder, use only fold K (repeatable; default: the mean "
                        "of every finished fold model)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="flip: average with the prediction on the mirrored frame (default: none)")
    parser.add_argument("--min-size", type=int, default=0, metavar="PX",
                        help="remove predicted components under PX pixels at the frame's own size "
                        "(default: 0, keep all)")
    parser.add_argument("--keep-largest", type=positive_int, metavar="N",
                        help="keep only the N largest predicted components (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungseg-predict",
        description="Segment ribs in lung ultrasound frames with a trained V-Unet or X-Unet, "
        "or the mean of a run's fold models.",
        epilog=(
            "Writes <name>_mask.png (0/255) and <name>_overlay.png per frame (frames of a "
            "multi-frame file are numbered <stem>_0001 ...; a video gets <stem>_overlay.<ext>), "
            "and predictions.csv. Exit status: 0 done; 1 some files could not be read "
            "(skipped, each named on stderr); 2 error."
        ),
    )
    parser.add_argument("model", type=Path, metavar="MODEL_OR_RUN",
                        help="a trained .keras model, or a run folder (its fold models' mean)")
    parser.add_argument(
        "input", type=Path, help="a frame (PNG, TIFF incl. multi-page, JPEG, BMP), DICOM file, "
        "video (.mp4, .avi, .mov), or a folder searched recursively for them"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder, mirroring INPUT's sub-folders "
        "(default: <INPUT stem>_masks beside INPUT)"
    )
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD,
        help="probability above which a pixel is rib (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help="frames per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--interpolation", choices=tuple(INTERPOLATIONS),
        help="resizing frames to the model input (default: the training run's, read from "
        "config.json beside the model or one folder up, else nearest as in the paper)",
    )
    add_prediction_options(parser)
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <name>_prob.png: the probability at the frame's size, "
                        "16-bit (value / 65535)")
    parser.add_argument("--spacing", type=spacing_option, metavar="MM|ROWxCOL",
                        help="pixel spacing in mm for rib areas in mm² (DICOM files give their own)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with an unfinished run folder, use its finished folds (default: refuse)")
    parser.add_argument("--max-value", type=int, metavar="N",
                        help="the largest value of 16-bit frames that do not state it, e.g. 4095 "
                        "for 12-bit data (default: the file's sBIT or MaxSampleValue, else 1023 "
                        "or 4095 when the values fit 10 or 12 bits, said in one line, else 65535)")
    parser.add_argument("--crop", choices=CROPS,
                        help="auto: predict on the imaging sector's bounding box of each frame, "
                        "zero outside it (default: as the training run did, from its config.json)")
    parser.add_argument("--keep-aspect", action=argparse.BooleanOptionalAction,
                        help="pad frames to the model's input instead of stretching them "
                        "(default: as the training run did)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def training_config(model_path: str | Path) -> RunConfig | None:
    """The ``RunConfig`` of the run folder holding this model (or of this run folder), or None."""
    from lungseg.runs import RunFolder

    model_path = Path(model_path)
    if model_path.is_dir():
        try:
            return RunFolder.open(model_path).config
        except (LungsegError, OSError, ValueError, TypeError):
            return None
    run = RunFolder.containing(model_path)
    return run.config if run is not None else None


def training_interpolation(model_path: str | Path) -> str | None:
    """The ``interpolation`` the run folder holding this model (or this run folder) was
    trained with, or None."""
    config = training_config(model_path)
    return config.interpolation if config is not None else None


def training_placement(model_path: str | Path) -> tuple[str, bool]:
    """``(crop, keep_aspect)`` the model's training run placed its frames with (the paper's
    ``("none", False)`` for a model outside a run folder or a run written before them)."""
    config = training_config(model_path)
    return (getattr(config, "crop", "none"), getattr(config, "keep_aspect", False))


PREDICTION_COLUMNS = ("file", "frame", "time_s", "height", "width", "row_spacing_mm", "column_spacing_mm",
                      "spacing_source", "rib_area_px", "rib_area_mm2", "components", "mean_probability",
                      "mask", "model", "threshold")
# A video's frames are decoded, segmented and written this many at a time (its progress too).
VIDEO_CHUNK_FRAMES = 64


def frame_spacing(source: Source, option: tuple[float, float] | None) -> tuple[tuple | None, str]:
    """The pixel spacing of ``source``'s rows and where it came from: the file's own ("file", a
    DICOM's), else ``--spacing`` ("option"), else none (""). When both are given and differ the
    file's wins, and a note on stderr says so, once per file."""
    if source.spacing:
        if option and tuple(option) != tuple(source.spacing):
            print(f"note: {source.path}: its own pixel spacing {source.spacing[0]:g} x "
                  f"{source.spacing[1]:g} mm is used, not --spacing {option[0]:g} x {option[1]:g}",
                  file=sys.stderr)
        return tuple(source.spacing), "file"
    return (tuple(option), "option") if option else (None, "")


def _chunks(frames: Sequence[np.ndarray], size: int) -> Iterable[list]:
    """Consecutive lists of up to ``size`` frames; a video's decoded as they are needed."""
    if hasattr(frames, "chunks"):
        yield from frames.chunks(size)
        return
    for start in range(0, len(frames), size):
        yield frames[start : start + size]


def _predict_source(
    args: argparse.Namespace,
    model: keras.Model,
    post: Callable[[np.ndarray], np.ndarray],  # a PostProcess
    source: Source,
    folder: Path,
    relative: Path,
    show_progress: bool = False,
) -> tuple[list[dict], str | None]:
    """Masks (and overlays, probabilities) of every frame of one source: its CSV rows, and the
    problem that stopped a video early (None when none did).

    A video is streamed: chunks of ``VIDEO_CHUNK_FRAMES`` frames are decoded, segmented and
    written (masks, overlay video) before the next is read, with its progress shown when
    ``show_progress``.
    """
    from lungseg.postprocess import frame_record

    spacing, spacing_source = frame_spacing(source, args.spacing)
    video = source.kind == "video"
    rows, index, problem = [], 0, None
    overlay = (OverlayVideo(folder / f"{source.path.stem}_overlay{source.path.suffix.lower()}", source.fps)
               if video else contextlib.nullcontext())
    size = VIDEO_CHUNK_FRAMES if video else PREDICT_CHUNK_FRAMES
    label = f"{relative.as_posix()} frames"
    with overlay, Progress(len(source.frames), label, enabled=show_progress and video and len(source.frames) > 0) as bar:
        try:
            for chunk in _chunks(source.frames, size):
                probabilities = native_probabilities(model, chunk, args.batch_size, args.interpolation,
                                                     args.crop, args.keep_aspect)
                for frame, native in zip(chunk, probabilities):
                    index += 1
                    mask = post((native > args.threshold).astype(np.uint8))
                    base = f"{source.path.stem}_{index:04d}" if source.multi else source.path.stem
                    _write_outputs(folder, base, frame, mask,
                                   native if args.save_probabilities else None, overlay=not video)
                    if video:
                        overlay.write(frame, mask)
                    record = frame_record(mask, native, spacing)
                    rows.append({
                        "file": relative.as_posix(), "frame": index,
                        "time_s": (index - 1) / source.fps if video and source.fps else None,
                        **{k: record[k] for k in ("height", "width")},
                        "row_spacing_mm": spacing[0] if spacing else None,
                        "column_spacing_mm": spacing[1] if spacing else None,
                        "spacing_source": spacing_source,
                        **{k: record[k] for k in ("rib_area_px", "rib_area_mm2", "components", "mean_probability")},
                        "mask": (relative.parent / f"{base}{MASK_SUFFIX}").as_posix(),
                        "model": str(args.model), "threshold": args.threshold,
                    })
                bar.advance(len(chunk))
        except DataError as error:  # a video that ends early: its decoded frames are kept
            if not video or not index:
                raise
            problem = f"{error}; its first {index} frames were segmented"
    return rows, problem


def _csv_text(rows: Iterable[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    """Do the work of the command line; return its exit status (0, or 1 if files skipped)."""
    from lungseg.postprocess import PostProcess
    from lungseg.runs import fold_name

    if args.interpolation is None:
        args.interpolation = training_interpolation(args.model) or "nearest"
    crop, keep_aspect = training_placement(args.model)
    args.crop = crop if args.crop is None else args.crop
    args.keep_aspect = keep_aspect if args.keep_aspect is None else args.keep_aspect
    _check_threshold(args.threshold)
    _check_batching(args.batch_size, args.interpolation)
    post = PostProcess(args.min_size, args.keep_largest)
    if args.max_value is not None and not 0 < args.max_value < 65536:
        raise ConfigError(f"--max-value must be between 1 and 65535, got {args.max_value}")
    if args.fold and not args.model.is_dir():
        raise ConfigError("--fold takes a run folder, not a model file")
    files, others = _frame_files(args.input)
    out = args.out if args.out is not None else default_output_folder(args.input)
    _check_output_folder(out, [args.input, args.model])
    folds = [fold_name(k) for k in args.fold] if args.fold else None
    # a missing model or fold, an unfinished run: before TensorFlow starts
    _, folds, _ = model_files(args.model, folds, args.allow_partial)
    from lungseg.files import written_whole
    from lungseg.inference import load_predictor

    predictor = load_predictor(args.model, tta=args.tta, folds=folds or None)
    model = predictor.model
    try:
        with written_whole(out) as folder:  # the old results stay until the new are whole
            return _predict_files(args, model, post, predictor, files, others, folder, out)
    except OSError as error:
        if error.filename:
            raise
        raise LungsegError(f"{out}: cannot write the output folder ({error.strerror})") from error


def _predict_files(
    args: argparse.Namespace,
    model: keras.Model,
    post: Callable[[np.ndarray], np.ndarray],
    predictor: object,
    files: list[Path],
    others: list[Path],
    out: Path,
    final: Path,
) -> int:
    """``run``'s work, writing into ``out`` (which becomes ``final``); its exit status."""
    from lungseg.data.sources import read_source
    from lungseg.files import write_text

    skipped = [f"{path}: unsupported file type" for path in others]
    partial = []  # videos that ended early: their decoded frames were written
    rows, depths = [], []
    with Progress(len(files), "segmenting files", enabled=len(files) > 1) as progress:
        for path in files:
            relative = path.relative_to(args.input) if args.input.is_dir() else Path(path.name)
            try:
                source = read_source(path, args.max_value)
            except DataError as error:
                if args.input.is_file():  # INPUT was this one file: nothing left to do
                    raise
                skipped.append(str(error))
                progress.advance(1)
                continue
            source_rows, problem = _predict_source(args, model, post, source, out / relative.parent,
                                                   relative, show_progress=len(files) == 1)
            rows += source_rows
            if problem:
                partial.append(problem)
            depths += [source.depth] if source.depth else []
            progress.advance(1)
    if rows:
        write_text(out / PREDICTIONS_CSV, _csv_text(rows))
    from lungseg.data.io import describe_depths

    depth_note = describe_depths(depths, args.input)[1]
    if depth_note:
        print(f"warning: {depth_note}", file=sys.stderr)

    total = len(files) + len(others)
    written = len(files) - (len(skipped) - len(others))
    if written:
        print(
            f"wrote {len(rows)} mask(s) of {written} file(s) to {final}, and {PREDICTIONS_CSV} "
            f"({predictor.description}; frames "
            f"{'cropped to the imaging sector, ' if args.crop == 'auto' else ''}"
            f"{'padded and ' if args.keep_aspect else ''}resized with {args.interpolation}, "
            f"threshold {args.threshold:g}; post-processing: {post.describe()})"
        )
    for problem in skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    for problem in partial:
        print(f"warning: {problem}", file=sys.stderr)
    if not written:
        print(f"error: none of the {total} files could be read (listed above)", file=sys.stderr)
        shutil.rmtree(out)  # nothing to show: the previous results stay (files.written_whole)
        return 2
    if skipped:
        print(
            f"error: {len(skipped)} of {total} files could not be read (listed above); "
            "the others were written",
            file=sys.stderr,
        )
        return 1
    if partial:
        print(f"error: {len(partial)} video(s) ended early (listed above); their decoded frames "
              "were written", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lungseg-predict``; returns the exit status (argparse exits on usage)."""
    return run_main(lambda arguments: run(build_parser().parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
