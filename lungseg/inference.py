"""Prediction beyond one model: slim model files, fold ensembles, flip TTA, post-processing.

* :func:`inference_copy` / :func:`save_inference_model`: a model without its optimizer state
  or compile configuration. Such a ``.keras`` file holds only Keras' own layers, so plain
  ``keras.models.load_model(path)`` loads it in a process that never imports lungseg.
* :func:`ensemble`: one Keras model whose output is the mean of several models'
  probabilities (nnU-Net's fold ensemble) and, with ``tta="flip"``, of their outputs on the
  left-right mirrored frame mirrored back. It is an ordinary model, so everything that takes
  a model (``predict_probabilities``, ``score_frames``, ``lungseg-export``) takes it too.
* :func:`load_predictor`: a run folder (its finished fold models, ensembled) or one model file,
  with the placement of frames its training run used (``Predictor.segment`` takes frames at
  their own size and gives masks at their own size).

Post-processing of masks and the numbers of a predicted frame live in ``lungseg.postprocess``
(NumPy and SciPy). The mirror layer of flip TTA, ``FlipLeftRight``, is registered in
``lungseg.models`` with the other layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from lungseg.config import TTA_CHOICES
from lungseg.errors import ConfigError
from lungseg.files import atomic_path
from lungseg.model_files import input_size, load_model, model_files, training_config
from lungseg.models import FlipLeftRight, inference_copy
from lungseg.predict import DEFAULT_BATCH_SIZE, DEFAULT_THRESHOLD, segment_batch


# --- slim model files --------------------------------------------------------------------


def save_inference_model(model: keras.Model, path: str | Path) -> Path:
    """Save :func:`inference_copy` of ``model`` to ``path`` (a ``.keras`` file) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ConfigError(f"{path}: a Keras model file must end in .keras")
    with atomic_path(path) as tmp:
        inference_copy(model).save(tmp)
    return path


# --- ensembles and test-time augmentation ------------------------------------------------


def ensemble(models: Iterable[keras.Model], tta: str = "none", name: str = "ensemble") -> keras.Model:
    """One model giving the mean probability of ``models`` (and of their mirrored outputs).

    ``models`` all take frames of one height and width; a gray (1-channel) ensemble input is
    copied to three channels for a member that takes three. With ``tta="flip"`` each member
    also sees the frame mirrored left-right and its output is mirrored back; the output is the
    mean of all ``len(models) * 2`` maps. One model without TTA is returned as it is. Members
    are renamed ``member_1`` ... so that their layers' names do not clash.
    """
    if tta not in TTA_CHOICES:
        raise ConfigError(f"unknown test-time augmentation {tta!r}: use one of {', '.join(TTA_CHOICES)}")
    models = list(models)
    if not models:
        raise ConfigError("an ensemble needs at least one model")
    if len(models) == 1 and tta == "none":
        return models[0]
    shapes = [input_size(model) for model in models]
    if len({shape[:2] for shape in shapes}) > 1:
        sizes = ", ".join(f"{h}x{w}" for h, w, _ in shapes)
        raise ConfigError(f"the models of an ensemble must take frames of one size, got {sizes}")
    height, width, channels = shapes[0]
    if any(c < channels for _, _, c in shapes):
        raise ConfigError("cannot ensemble a gray-input model after a colour-input one")
    inputs = keras.Input((height, width, channels), name="image")
    rgb = None
    outputs = []
    for index, (model, shape) in enumerate(zip(models, shapes), start=1):
        model.name = f"member_{index}"
        x = inputs
        if shape[2] != channels:
            if rgb is None:
                rgb = keras.layers.Concatenate(name="gray_to_rgb")([inputs] * 3)
            x = rgb
        outputs.append(model(x))
        if tta == "flip":
            mirrored = FlipLeftRight(name=f"flip_in_{index}")(x)
            outputs.append(FlipLeftRight(name=f"flip_out_{index}")(model(mirrored)))
    mean = keras.layers.Average(name="mean")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, mean, name=name)


@dataclass
class Predictor:
    """What ``load_predictor`` gives: the model to run, what it is made of, and how its
    training run placed frames (``interpolation``, ``crop``, ``keep_aspect``), so that
    :meth:`segment` takes frames at their own size."""

    model: object  # a keras.Model: one model or the ensemble
    paths: list  # the model files it was built from
    run: object = None  # the RunFolder when given one
    tta: str = "none"
    folds: list = field(default_factory=list)
    interpolation: str = "nearest"
    crop: str = "none"
    keep_aspect: bool = False

    def segment(self, frames: Iterable[Any], threshold: float = DEFAULT_THRESHOLD,
                batch_size: int = DEFAULT_BATCH_SIZE) -> list:
        """0/1 masks at each frame's own size, thresholded there (``lungseg.predict.segment_batch``)."""
        return segment_batch(self.model, frames, batch_size, threshold, self.interpolation,
                             self.crop, self.keep_aspect)

    @property
    def description(self) -> str:
        what = (f"mean of {len(self.paths)} fold models of {self.run.root}" if len(self.paths) > 1
                else str(self.paths[0]))
        return what + (" with flip test-time augmentation" if self.tta == "flip" else "")


def load_predictor(path: str | Path, tta: str = "none", folds: Iterable[str] | None = None,
                   allow_partial: bool = False) -> Predictor:
    """A run folder's fold ensemble, or one ``.keras`` model, ready to predict.

    ``path`` is a run folder (every fold model is loaded, or only ``folds``, names such as
    ``fold_2``; an unfinished run only with ``allow_partial``, its finished folds) or a model
    file. Raises ``LungsegError`` naming what is missing.
    """
    run, chosen, paths = model_files(path, folds, allow_partial)
    model = ensemble([load_model(p) for p in paths], tta=tta)
    config = training_config(path)
    placing = {} if config is None else {"interpolation": config.interpolation, "crop": config.crop,
                                         "keep_aspect": config.keep_aspect}
    return Predictor(model=model, paths=paths, run=run, tta=tta, folds=chosen, **placing)
