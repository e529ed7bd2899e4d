"""The paper's Dice and IoU with smoothing 1 over the flattened batch, against hand values."""

import keras
import numpy as np
import pytest

from lungseg import dice_coef, dice_loss, iou
from lungseg.losses import (
    LOSS_FUNCTIONS,
    EmptyOnRibs,
    FullPredictions,
    binary_crossentropy,
    dice_bce_loss,
    training_loss,
)


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


def test_dice_bce_by_hand():
    t = [[1, 1], [0, 0]]
    p = [[0.5, 0.75], [0.25, 0.5]]
    # Cross-entropy per pixel: -ln 0.5, -ln 0.75, -ln 0.75, -ln 0.5; mean (ln 2 + ln 4/3) / 2
    # = ln(8/3) / 2 = 0.490415. Dice: (2 * (0.5 + 0.75) + 1) / (2 + 2 + 1) = 3.5 / 5 = 0.7.
    assert value(binary_crossentropy, t, p) == pytest.approx(np.log(8 / 3) / 2, rel=1e-6)
    assert value(dice_bce_loss, t, p) == pytest.approx(np.log(8 / 3) / 2 - 0.7, rel=1e-5)
    # Certain and right: the cross-entropy of the clipped probabilities, -ln(1 - 1e-7).
    assert value(dice_bce_loss, T, T) == pytest.approx(-1.0, abs=1e-6)
    # Probabilities without the head's logits are clipped, so certain and wrong is finite:
    # -ln(1e-7) = 16.118 where a rib pixel got 0, -ln(1 - p) = 15.942 where background got
    # 1, p clipped to float32(1 - 1e-7) = 1 - 2^-23.
    wrong = [[0, 0], [1, 1]]
    expected = (-np.log(1e-7) - np.log(1 - float(np.float32(1 - 1e-7)))) / 2  # 16.030
    assert value(binary_crossentropy, T, wrong) == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(value(dice_bce_loss, T, wrong))
    assert set(LOSS_FUNCTIONS) == set(__import__("lungseg.config").config.LOSSES)


def test_the_cross_entropy_weight_scales_only_the_cross_entropy():
    t = [[1, 1], [0, 0]]
    p = [[0.5, 0.75], [0.25, 0.5]]
    # As above: cross-entropy ln(8/3) / 2, Dice 0.7; --bce-weight 0.5 halves the first term only.
    assert value(training_loss("dice_bce", 0.5), t, p) == pytest.approx(np.log(8 / 3) / 4 - 0.7, rel=1e-5)
    assert value(training_loss("dice_bce", 3), t, p) == pytest.approx(3 * np.log(8 / 3) / 2 - 0.7, rel=1e-5)
    assert training_loss("dice_bce") is dice_bce_loss and training_loss("dice") is dice_loss
    with pytest.raises(ValueError, match="applies to dice_bce, not dice"):
        training_loss("dice", 0.5)


def test_dice_bce_keeps_a_gradient_on_a_saturated_empty_prediction_of_a_thin_target():
    import tensorflow as tf

    truth = np.zeros((1, 8, 8, 1), np.float32)
    truth[0, 3, :] = 1  # a one-pixel line
    for start in (-12.0, -40.0):  # predicts all background; at -40, p = 4e-18 (below 1e-7)
        logits = tf.Variable(np.full((1, 8, 8, 1), start, np.float32))
        gradients = {}
        for name, loss in LOSS_FUNCTIONS.items():
            with tf.GradientTape() as tape:
                value_ = loss(truth, keras.activations.sigmoid(logits))  # as the model's head
            gradients[name] = float(tf.reduce_sum(tf.abs(tape.gradient(value_, logits))))
        # Cross-entropy from the head's logits: d/dlogit = (p - t) / 64, 8 line pixels at -1.
        assert gradients["dice_bce"] == pytest.approx(8 / 64, rel=1e-3)
        assert gradients["dice"] < 1e-3 * gradients["dice_bce"]


def test_dice_bce_brings_a_model_stuck_at_all_background_back():
    keras.utils.set_random_seed(0)
    truth = np.zeros((4, 8, 8, 1), np.float32)
    truth[:, 3, :] = 1
    images = truth * 200 + 20
    histories = {}
    for name, loss in LOSS_FUNCTIONS.items():
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        head = keras.layers.Conv2D(1, 1, activation="sigmoid",
                                   bias_initializer=keras.initializers.Constant(-20.0))  # p 2e-9
        model = keras.Model(inputs, head(x))
        model.compile(optimizer=keras.optimizers.Adam(0.5), loss=loss, metrics=[EmptyOnRibs()])
        histories[name] = model.fit(images, truth, epochs=40, verbose=0).history["empty_on_ribs"]
    assert histories["dice"][-1] == 1.0  # Dice alone never leaves the collapse
    assert histories["dice_bce"][-1] == 0.0  # with cross-entropy the line comes back


def test_collapse_metrics_count_empty_and_full_frames_and_match_scoring():
    ribs = np.zeros((4, 3, 3, 1), np.float32)
    ribs[:3, 1, 1] = 1  # frames 0-2 have a rib pixel, frame 3 none
    predictions = np.zeros((4, 3, 3, 1), np.float32)
    predictions[0, 1, 1] = 0.9  # found
    predictions[1] = 0.3  # empty (nothing above 0.5)
    predictions[2] = 0.8  # full
    predictions[3] = 0.6  # full, on a frame without ribs
    empty, full = EmptyOnRibs(), FullPredictions()
    for start in (0, 2):  # two batches, counted together
        empty.update_state(ribs[start:start + 2], predictions[start:start + 2])
        full.update_state(ribs[start:start + 2], predictions[start:start + 2])
    assert float(empty.result()) == pytest.approx(1 / 3)  # frame 1 of the 3 with ribs
    assert float(full.result()) == pytest.approx(2 / 4)  # frames 2 and 3
    empty.reset_state()
    assert float(empty.result()) == 0.0  # no frame counted: 0, not NaN

    from lungseg.data import FrameSet
    from lungseg.scoring import score_frames

    # The same frames scored by score_frames: a model that outputs its input / 255, fed the
    # predictions as gray levels.
    inputs = keras.Input((3, 3, 1))
    model = keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs))
    images = np.round(predictions * 255).astype(np.uint8)
    metrics = score_frames(model, FrameSet(list("abcd"), list("abcd"), images,
                                           ribs.astype(np.uint8))).metrics
    assert metrics["empty_on_ribs"] == pytest.approx(1 / 3)
    assert metrics["full_predictions"] == pytest.approx(2 / 4)


def test_models_compiled_with_the_new_loss_and_metrics_save_and_load(tmp_path):
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=dice_bce_loss, metrics=[EmptyOnRibs(), FullPredictions()])
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    y = (x > 0.7).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")  # compiled, safe mode
    assert again.loss is dice_bce_loss or again.loss.__name__ == "dice_bce_loss"
    logs = again.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "empty_on_ribs", "full_predictions"} <= set(logs)
