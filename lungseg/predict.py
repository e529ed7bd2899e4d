"""Segment new frames with a trained model: a small Python API and the ``lungseg-predict`` command.

The frames go through the paper's input handling (gray, resized to the model's input with
nearest-neighbour as Keras' image loader did); lungseg's models rescale 0-255 to 0-1 and
copy gray to three channels inside the graph, so nothing else is done here. The predicted
mask is thresholded and resized back to each frame's own size.

    model = load_model("weights/demo_xunet/fold_1/model.keras")
    mask = segment(model, frame)          # (H, W) uint8, 0/1, for an (H, W) uint8 frame

Command line::

    lungseg-predict MODEL INPUT [--out DIR] [--threshold T] [--batch-size B] [--debug]

INPUT is one frame or a folder of frames (any other entry of the folder, such as a
sub-folder or a text file, is named in a warning and skipped). For each frame
``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` (the frame with the mask tinted) are
written to ``--out``, by default ``<INPUT stem>_masks/`` beside INPUT. Existing files of
those names are replaced. Frames are resized as the model's training run did
(``interpolation`` in the ``config.json`` of its run folder), nearest-neighbour when there
is none, unless ``--interpolation`` is given.
Exit status: 0 all frames segmented; 1 some frames of a folder could not be read and were
skipped (each named on stderr, the others were written); 2 nothing was done because the
model, the input, the options or the output folder are unusable, or no frame was readable;
130 interrupted. Other exceptions are bugs and show their traceback.
"""

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

# Frames are resized exactly as for training (lungseg.data.frames.load_frames).
from lungseg.data.frames import INTERPOLATIONS
from lungseg.data.io import IMAGE_SUFFIXES, list_image_files, read_image, to_gray_uint8, write_image
from lungseg.cli import run_main
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.progress import Progress

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 20
# Frames prepared and predicted per model.predict call: about 35-100 MB of 256 x 256 input.
PREDICT_CHUNK_FRAMES = 512
MASK_SUFFIX = "_mask.png"
OVERLAY_SUFFIX = "_overlay.png"


def load_model(path, compile=False):
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

    from lungseg import losses  # noqa: F401

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


def _first_line(error):
    text = str(error).strip().strip("\"'")
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def input_size(model, source=None):
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


def _check_threshold(threshold):
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1, got {threshold}")


def _check_batching(batch_size, interpolation):
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"unknown interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}"
        )


def model_batch(frames, height, width, channels, interpolation="nearest", first_index=0):
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


def predict_probabilities(model, frames, batch_size=DEFAULT_BATCH_SIZE, interpolation="nearest"):
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
    model,
    frames,
    batch_size=DEFAULT_BATCH_SIZE,
    threshold=DEFAULT_THRESHOLD,
    interpolation="nearest",
):
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


def segment(model, frame, threshold=DEFAULT_THRESHOLD, interpolation="nearest"):
    """Mask of one frame ((H, W) or (H, W, C), uint8 or uint16): (H, W) uint8 of 0/1."""
    return segment_batch(model, [frame], 1, threshold, interpolation)[0]


# --- command line ------------------------------------------------------------------------


def _frame_files(input_path):
    """The frame files named by INPUT: the file itself, or a folder's frames sorted by name."""
    if not input_path.exists():
        raise DataError(f"{input_path}: input does not exist")
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if input_path.is_file():
        if input_path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{input_path}: not a frame file (expected one of {suffixes})")
        return [input_path]
    files, skipped = list_image_files(input_path)
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    if not files:
        raise DataError(f"{input_path}: folder holds no frames ({suffixes})")
    stems = {}
    for path in files:
        if path.stem in stems:
            raise DataError(
                f"{path}: same name as {stems[path.stem].name}; their masks would overwrite "
                "each other (rename one)"
            )
        stems[path.stem] = path
    return files


def default_output_folder(input_path):
    """``<INPUT stem>_masks/`` beside INPUT: ``scans/a.tif`` -> ``scans/a_masks/``."""
    input_path = Path(input_path)
    return input_path.parent / f"{input_path.stem}_masks"


def _check_output_folder(out):
    """Fail before any work when ``out`` cannot be created or written; create nothing yet."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LungsegError(f"{out}: cannot create the output folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LungsegError(
            f"{out}: output folder is not writable (no write permission on {existing})"
        )


def _write_outputs(out, source, frame, mask):
    """``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` for one frame, atomically."""
    from lungseg.figures import blend_mask  # matplotlib: only once there is a mask to draw

    overlay_bgr = cv2.cvtColor(blend_mask(frame, mask), cv2.COLOR_RGB2BGR)
    for path, image in (
        (out / f"{source.stem}{MASK_SUFFIX}", mask * np.uint8(255)),
        (out / f"{source.stem}{OVERLAY_SUFFIX}", overlay_bgr),
    ):
        try:
            write_image(path, image)
        except OSError as error:
            raise LungsegError(f"{path}: cannot write ({error.strerror or error})") from error


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lungseg-predict",
        description="Segment ribs in lung ultrasound frames with a trained V-Unet or X-Unet.",
        epilog=(
            "Writes <stem>_mask.png (0/255) and <stem>_overlay.png per frame. Exit status: "
            "0 done; 1 some frames could not be read (skipped, named on stderr); 2 error."
        ),
    )
    parser.add_argument("model", type=Path, help="trained model, a .keras file")
    parser.add_argument(
        "input", type=Path, help=f"a frame ({', '.join(IMAGE_SUFFIXES)}) or a folder of frames"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default: <INPUT stem>_masks beside INPUT)"
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
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def training_interpolation(model_path):
    """The ``interpolation`` the run folder holding this model was trained with, or None."""
    from lungseg.runs import RunFolder

    run = RunFolder.containing(model_path)
    return run.config.interpolation if run is not None else None


def run(args):
    """Do the work of the command line; return its exit status (0, or 1 if frames skipped)."""
    if args.interpolation is None:
        args.interpolation = training_interpolation(args.model) or "nearest"
    _check_threshold(args.threshold)
    _check_batching(args.batch_size, args.interpolation)
    files = _frame_files(args.input)
    out = args.out if args.out is not None else default_output_folder(args.input)
    _check_output_folder(out)
    model = load_model(args.model)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LungsegError(f"{out}: cannot create the output folder ({error.strerror})") from error

    skipped = []
    with Progress(len(files), "segmenting frames", enabled=len(files) > 1) as progress:
        for start in range(0, len(files), args.batch_size):
            chunk = files[start : start + args.batch_size]
            readable = []
            for path in chunk:
                try:
                    readable.append((path, read_image(path)))
                except DataError as error:
                    if args.input.is_file():  # INPUT was this one frame: nothing left to do
                        raise
                    skipped.append(str(error))
            masks = segment_batch(
                model, [frame for _, frame in readable], args.batch_size, args.threshold,
                args.interpolation,
            )
            for (path, frame), mask in zip(readable, masks):
                _write_outputs(out, path, frame, mask)
            progress.advance(len(chunk))

    written = len(files) - len(skipped)
    if written:
        print(
            f"wrote {written} mask(s) and overlay(s) to {out} "
            f"(frames resized with {args.interpolation}, threshold {args.threshold:g})"
        )
    for problem in skipped:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if not written:
        print(
            f"error: none of the {len(files)} frames could be read (listed above)", file=sys.stderr
        )
        return 2
    if skipped:
        print(
            f"error: {len(skipped)} of {len(files)} frames could not be read (listed above); "
            "the others were written",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv=None):
    """Entry point of ``lungseg-predict``; returns the exit status (argparse exits on usage)."""
    return run_main(lambda arguments: run(build_parser().parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
