"""The paper's Dice and IoU with smoothing 1 over the flattened batch, against hand values."""

import keras
import numpy as np
import pytest

from lungseg import dice_coef, dice_loss, iou


def value(metric, t, p):
    return float(np.asarray(metric(np.asarray(t, np.float32), np.asarray(p, np.float32))))


# 2x2 masks: t has 2 pixels, p has 3, they share 1.
T = [[1, 1], [0, 0]]
P = [[1, 0], [1, 1]]


def test_dice_by_hand():
    # (2*1 + 1) / (2 + 3 + 1) = 0.5
    assert value(dice_coef, T, P) == pytest.approx(0.5)
    assert value(dice_loss, T, P) == pytest.approx(-0.5)


def test_iou_by_hand():
    # (1 + 1) / (2 + 3 - 1 + 1) = 0.4
    assert value(iou, T, P) == pytest.approx(0.4)


def test_empty_mask_and_empty_prediction():
    empty = [[0, 0], [0, 0]]
    # both empty: smoothing gives 1 / 1
    assert value(dice_coef, empty, empty) == pytest.approx(1.0)
    assert value(iou, empty, empty) == pytest.approx(1.0)
    # empty prediction of a 2-pixel mask: 1 / (2 + 0 + 1)
    assert value(dice_coef, T, empty) == pytest.approx(1 / 3)
    assert value(iou, T, empty) == pytest.approx(1 / 3)
    # prediction of 3 pixels on an empty mask: 1 / (0 + 3 + 1)
    assert value(dice_coef, empty, P) == pytest.approx(1 / 4)


def test_soft_predictions_and_whole_batch_flattened():
    t = np.array([[[1.0, 0.0]], [[1.0, 1.0]]])  # batch of 2
    p = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])
    # intersection 0.5 + 1 = 1.5; sums 3 and 2: (3 + 1) / (5 + 1)
    assert value(dice_coef, t, p) == pytest.approx(4 / 6)
    # Not the mean of per-image Dice: (2*0.5+1)/(1+1+1)=2/3 and (2+1)/(2+1+1)=3/4
    assert value(dice_coef, t, p) != pytest.approx((2 / 3 + 3 / 4) / 2)


def test_metrics_accept_float16_predictions_and_return_float32():
    result = dice_coef(np.ones((1, 4, 4, 1), np.float32), np.ones((1, 4, 4, 1), np.float16))
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    assert float(np.asarray(result)) == pytest.approx(1.0)
