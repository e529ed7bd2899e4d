"""The paper's Dice loss and metrics, over the whole batch flattened, smoothing 1.

Written with ``keras.ops`` only and registered, so a compiled model saved to ``.keras``
loads in a fresh process (safe mode on) once ``lungseg`` is imported: importing Keras after
lungseg, or lungseg after Keras, imports this module too (``lungseg._startup``), and
``lungseg.predict.load_model`` imports it itself.
"""

import keras
from keras import ops

SMOOTH = 1.0


def _flat_float32(y_true, y_pred):
    # Sums stay in float32 even under mixed precision.
    return (
        ops.reshape(ops.cast(y_true, "float32"), (-1,)),
        ops.reshape(ops.cast(y_pred, "float32"), (-1,)),
    )


@keras.saving.register_keras_serializable(package="lungseg")
def dice_coef(y_true, y_pred):
    """(2 * sum(t * p) + 1) / (sum(t) + sum(p) + 1) over the flattened batch."""
    t, p = _flat_float32(y_true, y_pred)
    intersection = ops.sum(t * p)
    return (2.0 * intersection + SMOOTH) / (ops.sum(t) + ops.sum(p) + SMOOTH)


@keras.saving.register_keras_serializable(package="lungseg")
def dice_loss(y_true, y_pred):
    """Minus the Dice coefficient, as in the paper (ranges from -1, perfect, to about 0)."""
    return -dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package="lungseg")
def iou(y_true, y_pred):
    """(sum(t * p) + 1) / (sum(t) + sum(p) - sum(t * p) + 1) over the flattened batch."""
    t, p = _flat_float32(y_true, y_pred)
    intersection = ops.sum(t * p)
    return (intersection + SMOOTH) / (ops.sum(t) + ops.sum(p) - intersection + SMOOTH)
