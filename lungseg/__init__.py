"""lungseg: rib segmentation in lung ultrasound with transfer-learning U-Nets.

Reproduces Cheng & Lam (2021), "Transfer Learning U-Net Deep Learning for Lung Ultrasound
Segmentation", with Keras 3.
"""

import os

# Quiet TensorFlow's C++ start-up logging (imported with Keras), unless the user chose a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lungseg.losses import dice_coef, dice_loss, iou
from lungseg.models import build_vunet, build_xunet, freeze, parameter_counts, unfreeze

__version__ = "0.1.0"

__all__ = [
    "build_vunet",
    "build_xunet",
    "freeze",
    "unfreeze",
    "parameter_counts",
    "dice_coef",
    "dice_loss",
    "iou",
]
