"""The one loader of saved models and what a model path stands for.

* :func:`load_model`: a ``.keras`` (or ``.h5``) file with Keras' safe mode on, checked to take
  (height, width, 1 or 3) frames (:func:`input_size`);
* :func:`model_files`: a run folder's finished fold models, or one model file, checked before
  TensorFlow starts;
* :func:`training_config`: the configuration of the run that trained a model (how it
  placed its frames).

Prediction (``lungseg.predict``, ``lungseg.inference``), scoring, evaluation and export load
models through here; it imports neither of them (Keras only when a model is loaded).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lungseg.errors import LungsegError, first_line

if TYPE_CHECKING:
    import keras

    from lungseg.config import RunConfig
    from lungseg.runs import RunFolder


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

    from lungseg import losses, models  # noqa: F401  (register the Dice loss and FlipLeftRight)

    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, OSError, KeyError, TypeError...
        if "Lambda" in str(error):
            raise LungsegError(
                f"{path}: refused to load: the model holds a Lambda layer with Python code, "
                "which safe mode does not load because it could run arbitrary code; "
                "rebuild the model without Lambda layers"
            ) from error
        raise LungsegError(f"{path}: not a loadable Keras model ({first_line(error)})") from error
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
    from lungseg.runs import RunFolder

    path = Path(path)
    if not path.exists():
        if path.suffix in (".keras", ".h5"):
            raise LungsegError(f"{path}: model file does not exist")
        raise LungsegError(f"{path}: does not exist (give a run folder or a .keras model file)")
    if not path.is_dir():
        return None, [], [path]
    run = RunFolder.open(path)
    models = run.fold_models(allow_partial, list(folds or []))
    return run, list(models), list(models.values())


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
