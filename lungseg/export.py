"""Export a trained model or a run's fold ensemble out of Keras: the ``lungseg-export`` command.

The artifact takes raw frames at the model's input size, float32 ``(n, height, width,
channels)`` with values 0-255 (rescaling and the gray-to-RGB copy are inside the graph), and
returns the rib probabilities ``(n, height, width, 1)``. Nothing of lungseg is needed to run it.

Formats (all through Keras' ``model.export``, except ``keras``):

``keras``        a slim ``.keras`` file: no optimizer state; plain ``keras.models.load_model``
``saved_model``  a TensorFlow SavedModel folder (``serve`` and ``serving_default``)
``litert``       a LiteRT (TensorFlow Lite) ``.tflite`` file
``onnx``         an ONNX file, through tf2onnx (``pip install lungseg[export]``)

Command line::

    lungseg-export MODEL_OR_RUN --format FORMAT --out PATH [--fold K] [--tta flip] [--overwrite]

A run folder is exported as the mean of its finished fold models (one graph), or one fold
with ``--fold``. Exit status: 0 written; 2 nothing written (the error names the problem).
"""

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path

from lungseg.cli import positive_int, run_main
from lungseg.config import TTA_CHOICES
from lungseg.errors import ConfigError, LungsegError

FORMATS = {  # name -> (Keras' format name, file suffix or None for a folder)
    "keras": (None, ".keras"),
    "saved_model": ("tf_saved_model", None),
    "litert": ("litert", ".tflite"),
    "onnx": ("onnx", ".onnx"),
}
ONNX_PACKAGES = ("tf2onnx", "onnx")


def missing_packages(fmt):
    """Python packages the format's exporter needs that are not installed."""
    needed = ONNX_PACKAGES if fmt == "onnx" else ()
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _check(fmt, out):
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    suffix = FORMATS[fmt][1]
    if suffix and Path(out).suffix != suffix:
        raise ConfigError(f"{out}: the {fmt} format writes a {suffix} file; name it so")
    missing = missing_packages(fmt)
    if missing:
        raise ConfigError(
            f"the {fmt} export needs {', '.join(missing)}, which is not installed: "
            "pip install 'lungseg[export]'"
        )


def check_out(out, fmt, overwrite=False, sources=()):
    """Refuse an ``--out`` that would replace what lungseg did not write, before any work:
    an existing path without ``overwrite``; with it, anything but a file of the format's kind
    or a SavedModel folder (its ``saved_model.pb``); and the model or run being exported."""
    from lungseg.files import is_within

    out = Path(out)
    for source in sources:
        if is_within(out, source) or is_within(source, out):
            raise LungsegError(f"{out}: is, holds or lies inside {source}, which is being exported; "
                               "choose another --out")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise LungsegError(f"{out}: already exists; use --overwrite to replace it")
    folder = FORMATS[fmt][1] is None
    if out.is_dir() != folder:
        raise LungsegError(f"{out}: exists and is a {'folder' if out.is_dir() else 'file'}; "
                           "choose another --out")
    if folder and not (out / "saved_model.pb").is_file():
        raise LungsegError(f"{out}: exists and is not a SavedModel folder (no saved_model.pb); "
                           "--overwrite replaces only a SavedModel: choose another --out")


def export_model(model, out, fmt, overwrite=False):
    """Write ``model`` as ``fmt`` to ``out``; return the seconds the export took.

    The artifact is written beside ``out`` under a temporary name and renamed into place
    (``lungseg.files``), so ``out`` is either complete or absent (or, when the export fails,
    as it was; a SavedModel folder it replaces is put back if the rename fails).
    """
    out = Path(out)
    _check(fmt, out)
    check_out(out, fmt, overwrite)
    start = time.perf_counter()
    try:
        with _written(out, fmt) as tmp:
            _write_artifact(model, tmp, fmt)
    except LungsegError:
        raise
    except Exception as error:  # the converters raise anything
        text = str(error).strip().splitlines()
        raise LungsegError(
            f"{out}: {fmt} export failed ({type(error).__name__}: {text[0] if text else ''})"
        ) from error
    return time.perf_counter() - start


def _written(out, fmt):
    """Where the artifact is written before it replaces ``out``: a temporary folder for a
    SavedModel (``written_whole``), else a temporary file (``atomic_path``)."""
    from lungseg.files import atomic_path, written_whole

    return written_whole(out) if FORMATS[fmt][1] is None else atomic_path(out)


def _write_artifact(model, path, fmt):
    """Write ``model`` as ``fmt`` at ``path``: a slim ``.keras`` file, or Keras' ``export``."""
    if fmt == "keras":
        from lungseg.inference import inference_copy

        inference_copy(model).save(path)
        return
    import numpy as np

    # Keras' ONNX exporter refuses a model that was never called.
    model(np.zeros((1, *model.input_shape[1:]), np.float32), training=False)
    with warnings.catch_warnings():
        # Keras' tf2onnx patch probes np.object (hasattr), which NumPy 2 answers with a
        # FutureWarning on every ONNX export: not the user's concern.
        warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)
        model.export(str(path), format=FORMATS[fmt][0], verbose=False)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lungseg-export",
        description="Export a trained V-Unet / X-Unet (or a run's fold ensemble) for use "
        "without lungseg: a slim .keras file, a TensorFlow SavedModel, LiteRT or ONNX. The "
        "artifact takes float32 frames (n, height, width, channels) with values 0-255 at the "
        "model's input size and returns rib probabilities (n, height, width, 1).",
    )
    parser.add_argument("model", type=Path, metavar="MODEL_OR_RUN",
                        help="a .keras model file, or a run folder (the mean of its fold models)")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), dest="fmt",
                        help="keras (.keras), saved_model (folder), litert (.tflite), onnx (.onnx; "
                        "needs pip install 'lungseg[export]')")
    parser.add_argument("--out", required=True, type=Path, help="file or folder to write")
    parser.add_argument("--fold", type=positive_int, metavar="K",
                        help="export only fold K of a run folder (default: the mean of all finished folds)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="flip: also average the output on the mirrored frame, inside the graph "
                        "(the keras format then needs lungseg to load; the others do not)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out "
                        "(a file of the format, or a SavedModel folder; never the model exported)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="export an unfinished run's finished folds (default: refuse)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def run(args):
    from lungseg.inference import load_predictor
    from lungseg.runs import fold_name

    _check(args.fmt, args.out)
    check_out(args.out, args.fmt, args.overwrite, sources=[args.model])
    if args.fold is not None and not args.model.is_dir():
        raise ConfigError("--fold takes a run folder, not a model file")
    folds = [fold_name(args.fold)] if args.fold is not None else None
    predictor = load_predictor(args.model, tta=args.tta, folds=folds, allow_partial=args.allow_partial)
    seconds = export_model(predictor.model, args.out, args.fmt, overwrite=args.overwrite)
    height, width, channels = predictor.model.input_shape[1:]
    print(f"wrote {args.out} ({args.fmt}, {seconds:.1f} s): {predictor.description}; "
          f"input float32 (n, {height}, {width}, {channels}) values 0-255, "
          f"output probabilities (n, {height}, {width}, 1)")
    return 0


def main(argv=None):
    """Entry point of ``lungseg-export``; returns the exit status."""
    return run_main(lambda arguments: run(build_parser().parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
