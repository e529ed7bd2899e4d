"""``lungseg-predict``: segment frames, files and folders with a model or a run's fold models.

    lungseg-predict MODEL_OR_RUN INPUT [--out DIR] [--tta flip] [--fold K] [--min-size PX]
                    [--keep-largest N] [--save-probabilities] [--spacing MM] [--threshold T] ...

(also ``python -m lungseg.commands.predict``). MODEL_OR_RUN is a ``.keras`` model or a run
folder, whose finished fold models are averaged (``lungseg.inference.ensemble``). INPUT is a
frame, a multi-page TIFF, a DICOM file, a video, or a folder searched recursively for them
(``lungseg.data.sources``). For each frame ``<name>_mask.png`` (0/255) and
``<name>_overlay.png`` are written to ``--out`` (by default ``<INPUT stem>_masks/`` beside
INPUT) in the sub-folder mirroring INPUT's; the frames of a multi-frame file are named
``<stem>_0001`` ...; a video gets ``<stem>_overlay.<ext>``, a video of overlays.
``predictions.csv`` has one row per frame. ``--out`` is written whole: into a temporary folder
beside it, renamed into place when complete (an earlier predictions folder there is then
replaced; a folder of other files, an input or a run folder is refused). Frames are resized
as the model's training run did (``interpolation`` in the ``config.json`` of its run folder),
nearest-neighbour when there is none, unless ``--interpolation`` is given. See
``docs/inference.md``.
Exit status: 0 all files segmented; 1 some files of a folder could not be read or are of
an unsupported type and were skipped (each named on stderr, the others were written); 2
nothing was done because the model, the input, the options or the output folder are
unusable, or no file was readable; 130 interrupted (143 SIGTERM). Other exceptions are bugs
and show their traceback.

Parsing and checking the options, the input and the model path import no Keras or TensorFlow
(``lungseg.inference``, which does, is imported once they pass).
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

from lungseg.cli import non_negative_int, pair_option, positive_int, run_main, sample_value
from lungseg.config import CROPS, TTA_CHOICES
from lungseg.console import warn
from lungseg.data.frames import INTERPOLATIONS
from lungseg.data.io import write_image
from lungseg.data.sources import SOURCE_SUFFIXES, find_sources, is_source
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.model_files import model_files, training_config
from lungseg.predict import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THRESHOLD,
    PREDICT_CHUNK_FRAMES,
    check_batching,
    check_threshold,
    native_probabilities,
)
from lungseg.progress import Progress

if TYPE_CHECKING:
    import keras

    from lungseg.data.sources import Source

MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"
PROBABILITY_SUFFIX = "_prob.png"
PREDICTIONS_CSV = "predictions.csv"


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
    from lungseg.runs import check_output_folder

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
    values = pair_option(text, float, "MM or ROWxCOL in mm")
    if len(values) != 2 or not all(0 < v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite MM or ROWxCOL in mm, got {text!r}")
    return values


def add_prediction_options(parser: argparse.ArgumentParser) -> None:
    """The options choosing the models (--fold), test-time augmentation (--tta) and the
    clean-up of masks (--min-size, --keep-largest)."""
    parser.add_argument("--fold", type=positive_int, action="append", metavar="K",
                        help="with a run folder, use only fold K (repeatable; default: the mean "
                        "of every finished fold model)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="flip: average with the prediction on the mirrored frame (default: none)")
    parser.add_argument("--min-size", type=non_negative_int, default=0, metavar="PX",
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
    _add_inputs_and_output(parser)
    _add_mask_options(parser)
    add_prediction_options(parser)
    _add_file_options(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def _add_inputs_and_output(parser: argparse.ArgumentParser) -> None:
    """MODEL_OR_RUN, INPUT and --out."""
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


def _add_mask_options(parser: argparse.ArgumentParser) -> None:
    """How probabilities become masks (--threshold), how many frames a forward pass takes
    (--batch-size) and how frames are resized (--interpolation)."""
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


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    """What is written beside the masks, what the files do not say (spacing, bit depth), an
    unfinished run, and how frames are placed (--crop, --keep-aspect)."""
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <name>_prob.png: the probability at the frame's size, "
                        "16-bit (value / 65535)")
    parser.add_argument("--spacing", type=spacing_option, metavar="MM|ROWxCOL",
                        help="pixel spacing in mm for rib areas in mm² (DICOM files give their own)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with an unfinished run folder, use its finished folds (default: refuse)")
    parser.add_argument("--max-value", type=sample_value, metavar="N",
                        help="the largest value of 16-bit frames that do not state it, e.g. 4095 "
                        "for 12-bit data (default: the file's sBIT or MaxSampleValue, else 1023 "
                        "or 4095 when the values fit 10 or 12 bits, said in one line, else 65535)")
    parser.add_argument("--crop", choices=CROPS,
                        help="auto: predict on the imaging sector's bounding box of each frame, "
                        "zero outside it (default: as the training run did, from its config.json)")
    parser.add_argument("--keep-aspect", action=argparse.BooleanOptionalAction,
                        help="pad frames to the model's input instead of stretching them "
                        "(default: as the training run did)")


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

    spacing = frame_spacing(source, args.spacing)
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
                    record = frame_record(mask, native, spacing[0])
                    rows.append(_csv_row(args, source, relative, index, base, record, spacing))
                bar.advance(len(chunk))
        except DataError as error:  # a video that ends early: its decoded frames are kept
            if not video or not index:
                raise
            problem = f"{error}; its first {index} frames were segmented"
    return rows, problem


def _csv_row(
    args: argparse.Namespace,
    source: Source,
    relative: Path,
    index: int,
    base: str,
    record: dict,
    spacing: tuple[tuple | None, str],
) -> dict:
    """The ``predictions.csv`` row of frame ``index`` (from 1) of ``source``, whose mask is
    ``<base>_mask.png``; ``record`` is its ``lungseg.postprocess.frame_record``, ``spacing``
    :func:`frame_spacing`'s answer."""
    millimetres, spacing_source = spacing
    video = source.kind == "video"
    return {
        "file": relative.as_posix(), "frame": index,
        "time_s": (index - 1) / source.fps if video and source.fps else None,
        **{k: record[k] for k in ("height", "width")},
        "row_spacing_mm": millimetres[0] if millimetres else None,
        "column_spacing_mm": millimetres[1] if millimetres else None,
        "spacing_source": spacing_source,
        **{k: record[k] for k in ("rib_area_px", "rib_area_mm2", "components", "mean_probability")},
        "mask": (relative.parent / f"{base}{MASK_SUFFIX}").as_posix(),
        "model": str(args.model), "threshold": args.threshold,
    }


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
    post, files, others, out, folds = _check_arguments(args)
    from lungseg.files import written_whole
    from lungseg.inference import load_predictor

    predictor = load_predictor(args.model, tta=args.tta, folds=folds or None)
    try:
        with written_whole(out) as folder:  # the old results stay until the new are whole
            return _predict_files(args, predictor, post, files, others, folder, out)
    except OSError as error:
        if error.filename:
            raise
        raise LungsegError(f"{out}: cannot write the output folder ({error.strerror})") from error


def _check_arguments(
    args: argparse.Namespace,
) -> tuple[Callable[[np.ndarray], np.ndarray], list[Path], list[Path], Path, list[str]]:
    """Everything that can be checked before TensorFlow starts: the options (those left out
    filled in from the model's training run), INPUT, the output folder, the model files.
    Returns the post-processing, the frame files and other files of INPUT, the output folder
    and the fold names to load."""
    from lungseg.postprocess import PostProcess
    from lungseg.runs import fold_name

    config = training_config(args.model)  # how the model's run placed its frames, if known
    if args.interpolation is None:
        args.interpolation = config.interpolation if config else "nearest"
    args.crop = (config.crop if config else "none") if args.crop is None else args.crop
    args.keep_aspect = (config.keep_aspect if config else False) if args.keep_aspect is None else args.keep_aspect
    check_threshold(args.threshold)
    check_batching(args.batch_size, args.interpolation)
    post = PostProcess(args.min_size, args.keep_largest)
    if args.fold and not args.model.is_dir():
        raise ConfigError("--fold takes a run folder, not a model file")
    files, others = _frame_files(args.input)
    out = args.out if args.out is not None else default_output_folder(args.input)
    _check_output_folder(out, [args.input, args.model])
    folds = [fold_name(k) for k in args.fold] if args.fold else None
    # a missing model or fold, an unfinished run: before TensorFlow starts
    _, folds, _ = model_files(args.model, folds, args.allow_partial)
    return post, files, others, out, folds


def _predict_files(
    args: argparse.Namespace,
    predictor: object,  # a lungseg.inference.Predictor
    post: Callable[[np.ndarray], np.ndarray],
    files: list[Path],
    others: list[Path],
    out: Path,
    final: Path,
) -> int:
    """``run``'s work, writing into ``out`` (which becomes ``final``); its exit status."""
    from lungseg.data.io import describe_depths
    from lungseg.files import write_text

    rows, skipped, partial, depths = _segment_files(args, predictor.model, post, files, out)
    if rows:
        write_text(out / PREDICTIONS_CSV, _csv_text(rows))
    depth_note = describe_depths(depths, args.input)[1]
    if depth_note:
        warn(depth_note)
    skipped = [f"{path}: unsupported file type" for path in others] + skipped
    written = len(files) - (len(skipped) - len(others))
    if written:
        print(
            f"wrote {len(rows)} mask(s) of {written} file(s) to {final}, and {PREDICTIONS_CSV} "
            f"({predictor.description}; frames "
            f"{'cropped to the imaging sector, ' if args.crop == 'auto' else ''}"
            f"{'padded and ' if args.keep_aspect else ''}resized with {args.interpolation}, "
            f"threshold {args.threshold:g}; post-processing: {post.describe()})"
        )
    status = _exit_status(skipped, partial, written, total=len(files) + len(others))
    if not written:
        shutil.rmtree(out)  # nothing to show: the previous results stay (files.written_whole)
    return status


def _segment_files(
    args: argparse.Namespace,
    model: keras.Model,
    post: Callable[[np.ndarray], np.ndarray],
    files: list[Path],
    out: Path,
) -> tuple[list[dict], list[str], list[str], list[int]]:
    """Segment every file into ``out``: the CSV rows, the files skipped (unreadable, when INPUT
    is a folder), the videos that ended early, and the bit depths of the frames read."""
    from lungseg.data.sources import read_source

    rows, skipped, partial, depths = [], [], [], []
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
    return rows, skipped, partial, depths


def _exit_status(skipped: list[str], partial: list[str], written: int, total: int) -> int:
    """Name the files skipped and the videos cut short on stderr; the exit status they give."""
    for problem in skipped:
        warn(f"skipped {problem}")
    for problem in partial:
        warn(problem)
    if not written:
        print(f"error: none of the {total} files could be read (listed above)", file=sys.stderr)
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
