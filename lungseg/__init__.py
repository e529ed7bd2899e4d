"""lungseg: rib segmentation in lung ultrasound with transfer-learning U-Nets.

Reproduces Cheng & Lam (2021), "Transfer Learning U-Net Deep Learning for Lung Ultrasound
Segmentation", with Keras 3.

``import lungseg`` is light: the models and losses below are imported on first use (PEP 562),
so ``from lungseg import build_vunet`` works and ``import lungseg`` alone loads neither Keras
nor TensorFlow, and changes nothing global (no import hook, no environment variable): the
commands quiet TensorFlow's start-up log themselves (``lungseg._startup``).
"""

from lungseg import _startup

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "build_vunet": "lungseg.models",
    "build_xunet": "lungseg.models",
    "freeze": "lungseg.models",
    "unfreeze": "lungseg.models",
    "parameter_counts": "lungseg.models",
    "dice_coef": "lungseg.losses",
    "dice_loss": "lungseg.losses",
    "iou": "lungseg.losses",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = _startup.lazy_attributes(__name__, _LAZY)
