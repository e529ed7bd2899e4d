"""The paper's Dice loss and metrics, over the whole batch flattened, smoothing 1; Dice plus
binary cross-entropy; and the streaming shares of empty and full predictions that tell a
collapsed training stage.

Written with ``keras.ops`` only and registered, so a compiled model saved to ``.keras``
loads in a fresh process (safe mode on) once this module is imported (before or after
Keras); ``lungseg.model_files.load_model`` imports it itself.
``LOSS_FUNCTIONS``
maps the names of ``config.LOSSES`` (``--loss``) to the functions; ``training_loss`` adds the
cross-entropy weight (``--bce-weight``).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops

SMOOTH = 1.0
# What keras.ops takes and gives: a tensor of the Keras backend (tf.Tensor, jax.Array...).
Tensor = Any


def _flat_float32(y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
    # Sums stay in float32 even under mixed precision.
    return (
        ops.reshape(ops.cast(y_true, "float32"), (-1,)),
        ops.reshape(ops.cast(y_pred, "float32"), (-1,)),
    )


@keras.saving.register_keras_serializable(package="lungseg")
def dice_coef(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """(2 * sum(t * p) + 1) / (sum(t) + sum(p) + 1) over the flattened batch."""
    t, p = _flat_float32(y_true, y_pred)
    intersection = ops.sum(t * p)
    return (2.0 * intersection + SMOOTH) / (ops.sum(t) + ops.sum(p) + SMOOTH)


@keras.saving.register_keras_serializable(package="lungseg")
def dice_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Minus the Dice coefficient, as in the paper (ranges from -1, perfect, to about 0)."""
    return -dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="lungseg")
def iou(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """(sum(t * p) + 1) / (sum(t) + sum(p) - sum(t * p) + 1) over the flattened batch."""
    t, p = _flat_float32(y_true, y_pred)
    intersection = ops.sum(t * p)
    return (intersection + SMOOTH) / (ops.sum(t) + ops.sum(p) - intersection + SMOOTH)


@keras.saving.register_keras_serializable(package="lungseg")
def binary_crossentropy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Mean over all pixels of the batch of -(t log p + (1 - t) log(1 - p)), in float32.

    ``keras.ops.binary_crossentropy`` on the model's output as it is: on TensorFlow it finds
    the logits behind the sigmoid head and works from them, so a prediction saturated at 0
    or 1 keeps its gradient (otherwise p is clipped to [1e-7, 1 - 1e-7], and a model pushed
    below 1e-7 everywhere would get no gradient back, a collapse of its own).
    """
    target = ops.cast(y_true, y_pred.dtype)
    return ops.mean(ops.cast(ops.binary_crossentropy(target, y_pred), "float32"))


@keras.saving.register_keras_serializable(package="lungseg")
def dice_bce_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
    """Binary cross-entropy plus the paper's Dice loss (minus the Dice coefficient), weights
    1 and 1, as nnU-Net's Dice + CE loss adds its soft Dice loss (-Dice) to the cross-entropy.

    Dice alone gives no gradient towards a thin target the model has stopped predicting
    (an all-background output scores Dice ~0 whatever it does nearby); the pixel-wise
    cross-entropy still does. Ranges from -1 (perfect) upwards.
    """
    return binary_crossentropy(y_true, y_pred) + dice_loss(y_true, y_pred)


LOSS_FUNCTIONS = {"dice": dice_loss, "dice_bce": dice_bce_loss}


def training_loss(name: str, bce_weight: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss ``--loss name`` trains with; ``dice_bce`` with its cross-entropy weighted by
    ``bce_weight`` (``--bce-weight``), the Dice term by 1."""
    if bce_weight == 1:
        return LOSS_FUNCTIONS[name]
    if name != "dice_bce":
        raise ValueError(f"a cross-entropy weight applies to dice_bce, not {name}")

    def weighted_dice_bce_loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
        return bce_weight * binary_crossentropy(y_true, y_pred) + dice_loss(y_true, y_pred)

    return weighted_dice_bce_loss


class _FrameShare(keras.metrics.Metric):
    """Share of frames of a kind, counted over every batch of an epoch (threshold 0.5)."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits",
                                      aggregation="sum")
        self.frames = self.add_variable(shape=(), initializer="zeros", name="frames",
                                        aggregation="sum")

    def update_state(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor | None = None) -> None:
        batch = ops.shape(y_true)[0]
        t = ops.reshape(ops.cast(y_true, "float32"), (batch, -1))
        p = ops.reshape(ops.cast(y_pred, "float32"), (batch, -1))
        hits, frames = self._count(t > 0.5, p > 0.5)
        self.hits.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.frames.assign_add(ops.sum(ops.cast(frames, "float32")))

    def result(self) -> Tensor:
        return ops.divide_no_nan(self.hits, self.frames)

    def get_config(self) -> dict:
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="lungseg")
class EmptyOnRibs(_FrameShare):
    """Share of frames with ribs (any reference pixel) whose prediction is empty: the
    streaming twin of ``lungseg.scoring``'s ``empty_on_ribs``."""

    def __init__(self, name: str = "empty_on_ribs", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def _count(self, reference: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
        has_ribs = ops.any(reference, axis=1)
        return has_ribs & ~ops.any(predicted, axis=1), has_ribs


@keras.saving.register_keras_serializable(package="lungseg")
class FullPredictions(_FrameShare):
    """Share of frames predicted foreground everywhere: the streaming twin of
    ``lungseg.scoring``'s ``full_predictions``."""

    def __init__(self, name: str = "full_predictions", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def _count(self, reference: Tensor, predicted: Tensor) -> tuple[Tensor, Tensor]:
        return ops.all(predicted, axis=1), ops.ones_like(predicted[:, 0])
