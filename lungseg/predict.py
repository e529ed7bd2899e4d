"""Segment new frames with a trained model: a small Python API and the ``lungseg-predict`` command.

The frames go through the paper's input handling (gray, resized to the model's input with
nearest-neighbour as Keras' image loader did); lungseg's models rescale 0-255 to 0-1 and
copy gray to three channels inside the graph, so nothing else is done here. The predicted
mask is thresholded and resized back to each frame's own size.

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
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

# Frames are resized exactly as for training (lungseg.data.frames.load_frames).
from lungseg.data.frames import INTERPOLATIONS, check_interpolation
from lungseg.data.io import to_gray_uint8, write_image
from lungseg.data.sources import SOURCE_SUFFIXES, find_sources, is_source
from lungseg.cli import run_main
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.config import TTA_CHOICES
from lungseg.progress import Progress

if TYPE_CHECKING:
    import keras

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
) -> np.ndarray:
    """Frames as the model's input batch: uint8 (n, height, width, channels), values 0-255.

    Each frame is made 2-D uint8 gray as ``lungseg.data.io.read_image`` does (3- or
    4-channel arrays are taken as OpenCV's BGR/BGRA, 16-bit scaled to 0-255), resized, and
    copied to three channels when the model wants them. The batch stays uint8 (a quarter of
    float32's memory and transfer); Keras casts it to the model's float input exactly. A
    frame that cannot be converted raises ``DataError`` naming it as ``frame <index>``.
    """
    flag = INTERPOLATIONS[interpolation]
    batch = np.empty((len(frames), height, width, 1), np.uint8)
    for index, frame in enumerate(frames):
        gray = to_gray_uint8(np.asarray(frame), f"frame {first_index + index}")
        batch[index, :, :, 0] = cv2.resize(gray, (width, height), interpolation=flag)
    return np.repeat(batch, channels, axis=3) if channels == 3 else batch


def predict_probabilities(
    model: keras.Model,
    frames: Iterable[np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
    interpolation: str = "nearest",
) -> np.ndarray:
    """Sigmoid outputs (n, h, w) float32 at the model's resolution.

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
        batch = model_batch(chunk, height, width, channels, interpolation, first_index=start)
        if len(chunk) <= batch_size:
            output = model.predict_on_batch(batch)
        else:
            output = model.predict(batch, batch_size=batch_size, verbose=0)
        outputs.append(np.asarray(output)[..., 0])
    return np.concatenate(outputs).astype(np.float32, copy=False)


def segment_batch(
    model: keras.Model,
    frames: Iterable[np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
    interpolation: str = "nearest",
) -> list[np.ndarray]:
    """Masks for many frames: a list of (H_i, W_i) uint8 arrays of 0/1, one per frame.

    Frames may differ in size; each mask has its frame's size. A pixel is foreground when
    its probability exceeds ``threshold`` (``>``, as Keras' ``binary_accuracy``), decided
    at the model's resolution, then resized back with nearest-neighbour.
    """
    _check_threshold(threshold)
    frames = list(frames)
    probabilities = predict_probabilities(model, frames, batch_size, interpolation)
    masks = []
    for frame, probability in zip(frames, probabilities):
        frame_height, frame_width = np.shape(frame)[:2]
        mask = (probability > threshold).astype(np.uint8)
        masks.append(
            cv2.resize(mask, (frame_width, frame_height), interpolation=cv2.INTER_NEAREST_EXACT)
        )
    return masks


def segment(
    model: keras.Model,
    frame: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    interpolation: str = "nearest",
) -> np.ndarray:
    """Mask of one frame ((H, W) or (H, W, C), uint8 or uint16): (H, W) uint8 of 0/1."""
    return segment_batch(model, [frame], 1, threshold, interpolation)[0]


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


def _write_overlay_video(
    path: Path, frames: Sequence[np.ndarray], masks: Iterable[np.ndarray], fps: float | None
) -> None:
    """The frames with their masks tinted, as a video of the input's kind, atomically."""
    from lungseg.figures import blend_mask
    from lungseg.files import atomic_path

    height, width = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODECS[path.suffix.lower()]),
                                 fps or 25.0, (width, height), True)
        if not writer.isOpened():
            raise LungsegError(f"{path}: cannot write the overlay video (no {path.suffix} encoder)")
        try:
            for frame, mask in zip(frames, masks):
                writer.write(cv2.cvtColor(blend_mask(frame, mask), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()


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
                        "for 12-bit data (default: the file's sBIT or MaxSampleValue, else 65535)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def training_interpolation(model_path: str | Path) -> str | None:
    """The ``interpolation`` the run folder holding this model (or this run folder) was
    trained with, or None."""
    from lungseg.runs import RunFolder

    model_path = Path(model_path)
    if model_path.is_dir():
        try:
            return RunFolder.open(model_path).config.interpolation
        except (LungsegError, OSError, ValueError, TypeError):
            return None
    run = RunFolder.containing(model_path)
    return run.config.interpolation if run is not None else None


PREDICTION_COLUMNS = ("file", "frame", "height", "width", "row_spacing_mm", "column_spacing_mm",
                      "rib_area_px", "rib_area_mm2", "components", "mean_probability", "mask")


def _predict_source(
    args: argparse.Namespace,
    model: keras.Model,
    post: Callable[[np.ndarray], np.ndarray],  # a PostProcess
    source: Source,
    folder: Path,
    relative: Path,
) -> list[dict]:
    """Masks (and overlays, probabilities) of every frame of one source; its CSV rows."""
    frames = source.frames
    multi = source.multi
    spacing = source.spacing or args.spacing
    rows, masks = [], []
    from lungseg.postprocess import frame_record

    for start in range(0, len(frames), PREDICT_CHUNK_FRAMES):
        chunk = frames[start : start + PREDICT_CHUNK_FRAMES]
        probabilities = predict_probabilities(model, chunk, args.batch_size, args.interpolation)
        for offset, (frame, probability) in enumerate(zip(chunk, probabilities)):
            index = start + offset + 1
            height, width = frame.shape[:2]
            mask = cv2.resize((probability > args.threshold).astype(np.uint8), (width, height),
                              interpolation=cv2.INTER_NEAREST_EXACT)
            mask = post(mask)
            native = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
            base = f"{source.path.stem}_{index:04d}" if multi else source.path.stem
            _write_outputs(folder, base, frame, mask,
                           native if args.save_probabilities else None,
                           overlay=source.kind != "video")
            record = frame_record(mask, native, spacing)
            rows.append({
                "file": relative.as_posix(), "frame": index, **{k: record[k] for k in ("height", "width")},
                "row_spacing_mm": spacing[0] if spacing else None,
                "column_spacing_mm": spacing[1] if spacing else None,
                **{k: record[k] for k in ("rib_area_px", "rib_area_mm2", "components", "mean_probability")},
                "mask": (relative.parent / f"{base}{MASK_SUFFIX}").as_posix(),
            })
            if source.kind == "video":
                masks.append(mask)
    if source.kind == "video":
        _write_overlay_video(folder / f"{source.path.stem}_overlay{source.path.suffix.lower()}",
                             frames, masks, source.fps)
    return rows


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
    rows = []
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
            rows += _predict_source(args, model, post, source, out / relative.parent, relative)
            progress.advance(1)
    if rows:
        write_text(out / PREDICTIONS_CSV, _csv_text(rows))

    total = len(files) + len(others)
    written = len(files) - (len(skipped) - len(others))
    if written:
        print(
            f"wrote {len(rows)} mask(s) of {written} file(s) to {final}, and {PREDICTIONS_CSV} "
            f"({predictor.description}; frames resized with {args.interpolation}, "
            f"threshold {args.threshold:g}; post-processing: {post.describe()})"
        )
    for problem in skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
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
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lungseg-predict``; returns the exit status (argparse exits on usage)."""
    return run_main(lambda arguments: run(build_parser().parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
