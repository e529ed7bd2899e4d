"""Per-image metrics against values worked out by hand on small masks."""

import math

import numpy as np
import pytest

from lungseg.evaluation import (
    EMPTY_MASK_RULE,
    aggregate_folds,
    batch_dice,
    batch_iou,
    evaluate_masks,
    hd95,
    image_metrics,
    nan_to_none,
    notebook_order,
    summarize,
)


def square(shape=(30, 30), rows=(10, 20), cols=(10, 20)):
    mask = np.zeros(shape, np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


def test_both_masks_empty():
    empty = np.zeros((8, 8), bool)
    metrics = image_metrics(empty, empty)
    for name in ("dice", "iou", "precision", "recall", "hd95"):
        assert math.isnan(metrics[name]), name
    assert metrics["accuracy"] == 1.0
    assert (metrics["components_pred"], metrics["components_ref"], metrics["spurious"]) == (0, 0, 0)


def test_empty_reference_with_a_prediction():
    metrics = image_metrics(np.zeros((30, 30), np.uint8), square())
    assert metrics["dice"] == 0.0 and metrics["iou"] == 0.0
    assert metrics["precision"] == 0.0
    assert math.isnan(metrics["recall"])
    assert math.isnan(metrics["hd95"])
    assert metrics["spurious"] == 1
    assert metrics["accuracy"] == pytest.approx(1 - 100 / 900)


def test_empty_prediction_with_a_reference():
    metrics = image_metrics(square(), np.zeros((30, 30), np.uint8))
    assert metrics["dice"] == 0.0 and metrics["iou"] == 0.0
    assert math.isnan(metrics["precision"])
    assert metrics["recall"] == 0.0
    assert math.isnan(metrics["hd95"])
    assert (metrics["components_pred"], metrics["components_ref"]) == (0, 1)


def test_identical_masks():
    metrics = image_metrics(square(), square().astype(bool))
    assert metrics["dice"] == metrics["iou"] == metrics["precision"] == metrics["recall"] == 1.0
    assert metrics["hd95"] == 0.0
    assert metrics["spurious"] == 0


def test_half_overlap_precision_recall():
    # Reference 10x10 = 100 px; prediction 10x10 shifted right by half: 50 px in, 50 px out.
    metrics = image_metrics(square(), square(cols=(15, 25)))
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5)
    assert metrics["dice"] == pytest.approx(0.5)
    assert metrics["iou"] == pytest.approx(50 / 150)
    assert metrics["accuracy"] == pytest.approx(1 - 100 / 900)


def test_precision_differs_from_recall():
    # Prediction is the left 4 columns of the 10x10 reference: all correct, 40 % found.
    metrics = image_metrics(square(), square(cols=(10, 14)))
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == pytest.approx(0.4)


@pytest.mark.parametrize("shift", [1, 3, 5])
def test_hd95_of_a_shifted_square_is_the_shift(shift):
    reference = square(shape=(40, 40))
    prediction = square(shape=(40, 40), cols=(10 + shift, 20 + shift))
    assert hd95(reference, prediction) == pytest.approx(shift)
    assert hd95(prediction, reference) == pytest.approx(shift)
    assert image_metrics(reference, prediction)["hd95"] == pytest.approx(shift)


def test_hd95_counts_the_frame_edge_as_boundary():
    full = np.ones((20, 20), bool)
    cut = full.copy()
    cut[:, 17:] = False  # three columns fewer on the right
    assert hd95(full, cut) == pytest.approx(3)


def test_hd95_ignores_a_few_outlying_pixels():
    # One stray pixel far away is under 5 % of the boundary: the 95th percentile skips it,
    # where the plain Hausdorff distance would be about 35.
    reference = square(shape=(60, 60), rows=(5, 35), cols=(5, 35))
    prediction = reference.copy()
    prediction[55, 55] = 1
    assert hd95(reference, prediction) == 0.0


def test_spurious_component_counted():
    reference = square(shape=(40, 40))
    prediction = square(shape=(40, 40), rows=(12, 18), cols=(12, 18))
    prediction[30:33, 30:33] = 1  # a blob away from the rib
    metrics = image_metrics(reference, prediction)
    assert metrics["components_pred"] == 2
    assert metrics["components_ref"] == 1
    assert metrics["spurious"] == 1


def test_components_use_8_connectivity():
    diagonal = np.eye(5, dtype=bool)
    metrics = image_metrics(diagonal, diagonal)
    assert metrics["components_pred"] == metrics["components_ref"] == 1


def test_every_metric_is_reported_with_its_value_for_identical_masks():
    metrics = image_metrics(square(), square())  # a 10 x 10 square in a 30 x 30 frame
    assert metrics == {"dice": 1.0, "iou": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0,
                       "hd95": 0.0, "assd": 0.0, "components_pred": 1, "components_ref": 1, "spurious": 0}


def test_rejects_non_binary_and_mismatched_masks():
    with pytest.raises(ValueError, match="binary"):
        image_metrics(square() * 255, square())
    with pytest.raises(ValueError, match="shape"):
        image_metrics(square(), square(shape=(31, 30)))
    with pytest.raises(ValueError, match="2-D"):
        image_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))


def test_batch_dice_matches_the_training_metric():
    from lungseg.losses import dice_coef

    rng = np.random.default_rng(0)
    references = (rng.random((6, 16, 16, 1)) > 0.7).astype(np.float32)
    probabilities = rng.random((6, 16, 16, 1)).astype(np.float32)
    masks = (probabilities > 0.5).astype(np.float32)
    for predictions in (probabilities, masks):
        expected = float(dice_coef(references, predictions))
        assert batch_dice(references, predictions) == pytest.approx(expected, rel=1e-5)
    # (N, H, W) references against (N, H, W, 1) model outputs.
    assert batch_dice(references[..., 0], masks) == pytest.approx(batch_dice(references, masks))


def test_paper_dice_is_the_mean_of_20_frame_batch_dice_worked_by_hand():
    # 40 frames of 10 pixels. Batch 1 (frames 0-19): each reference has 2 rib pixels and each
    # prediction hits one of them with probability 1: intersection 20, sum(t) 40, sum(p) 20,
    # Dice (2*20 + 1) / (40 + 20 + 1) = 41/61. Batch 2 (frames 20-39): empty references and
    # predictions of 0.5 on one pixel: intersection 0, sum(p) 10, Dice 1/11.
    references = np.zeros((40, 10))
    predictions = np.zeros((40, 10))
    references[:20, :2] = 1
    predictions[:20, 0] = 1
    predictions[20:, 5] = 0.5
    assert batch_dice(references, predictions, batch_size=20) == pytest.approx((41 / 61 + 1 / 11) / 2)
    # One batch of all 40: intersection 20, sum(t) 40, sum(p) 30 -> 41/71.
    assert batch_dice(references, predictions) == pytest.approx(41 / 71)
    # IoU of batch 1: (20 + 1) / (40 + 20 - 20 + 1) = 21/41; batch 2: 1 / (10 + 1).
    assert batch_iou(references, predictions, batch_size=20) == pytest.approx((21 / 41 + 1 / 11) / 2)
    # A last, smaller batch counts as one batch, as Keras' evaluate weighs it.
    assert batch_dice(references[:30], predictions[:30], batch_size=20) == pytest.approx(
        (41 / 61 + 1 / 6) / 2)  # frames 20-29: sum(p) 5 -> 1/6


def test_batch_dice_smoothing_with_empty_masks():
    empty = np.zeros((2, 4, 4))
    assert batch_dice(empty, empty) == 1.0  # (0 + 1) / (0 + 0 + 1)
    one = np.zeros((1, 4, 4))
    one[0, 0, 0] = 1
    assert batch_dice(one, empty[:1], smooth=0.5) == pytest.approx(0.5 / 1.5)  # (0 + .5) / (1 + 0 + .5)


@pytest.mark.parametrize(
    "per_fold, expected",
    [
        ({}, {"n": 0, "mean": None, "sd": None, "sd_paper": None, "best": None, "best_value": None}),
        ({"fold_1": 0.8}, {"n": 1, "mean": 0.8, "sd": None, "sd_paper": None, "best": "fold_1", "best_value": 0.8}),
        # 0.80 and 0.86: mean 0.83, deviations 0.03; np.std 0.03, sample SD 0.03 * sqrt(2)
        ({"fold_1": 0.80, "fold_2": 0.86},
         {"n": 2, "mean": 0.83, "sd": 0.03 * 2 ** 0.5, "sd_paper": 0.03, "best": "fold_2", "best_value": 0.86}),
    ],
)
def test_folds_aggregate_with_one_rule(per_fold, expected):
    result = aggregate_folds(per_fold)
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_summarize_counts_and_skips_nan():
    empty = np.zeros((30, 30), np.uint8)
    rows = evaluate_masks(
        [square(), square(), empty, square()],
        [square(), square(cols=(15, 25)), empty, empty],
    )
    for name, row in zip("abcd", rows):
        row["name"] = name  # non-metric keys are ignored
    summary = summarize(rows)
    assert summary["images"] == 4
    assert summary["empty_reference"] == 1
    assert summary["empty_prediction"] == 2
    assert summary["empty_mask_rule"] == EMPTY_MASK_RULE
    dice = summary["metrics"]["dice"]
    assert dice["count"] == 3  # both-empty image has no Dice
    assert dice["mean"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert dice["median"] == pytest.approx(0.5)
    assert dice["sd"] == pytest.approx(np.std([1.0, 0.5, 0.0], ddof=1))
    assert summary["metrics"]["precision"]["count"] == 2
    assert summary["metrics"]["recall"]["count"] == 3
    assert summary["metrics"]["hd95"]["count"] == 2
    assert summary["metrics"]["spurious"]["count"] == 4


def test_summarize_all_nan_and_no_rows():
    empty = np.zeros((4, 4), bool)
    summary = summarize([image_metrics(empty, empty)])
    assert summary["metrics"]["dice"]["count"] == 0
    assert math.isnan(summary["metrics"]["dice"]["mean"])
    assert math.isnan(summary["metrics"]["accuracy"]["sd"])  # one value: no SD
    assert summarize([]) == {
        "images": 0,
        "empty_reference": 0,
        "empty_prediction": 0,
        "empty_mask_rule": EMPTY_MASK_RULE,
        "metrics": {},
    }


def test_nan_to_none_for_strict_json():
    assert nan_to_none({"a": [1.0, math.nan], "b": {"c": math.nan}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }


def test_evaluate_masks_length_mismatch():
    with pytest.raises(ValueError, match="2 reference masks but 1"):
        evaluate_masks([square(), square()], [square()])


def test_batch_dice_per_batch_equals_keras_evaluate():
    """The claim in batch_dice's docstring: Keras averages a metric over batches, unweighted."""
    import keras

    from lungseg.losses import dice_coef

    rng = np.random.default_rng(2)
    images = rng.random((5, 8, 8, 1)).astype(np.float32)
    references = (rng.random((5, 8, 8, 1)) > 0.5).astype(np.float32)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss="mse", metrics=[dice_coef])
    result = model.evaluate(images, references, batch_size=2, verbose=0, return_dict=True)
    expected = batch_dice(references, images, batch_size=2)
    assert result["dice_coef"] == pytest.approx(expected, rel=1e-5)
    assert batch_dice(references, images) != pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k", [1, 4, 15])
def test_hd95_and_assd_at_native_size_in_pixels_and_mm(k):
    """The issue's worked example: a 960 x 128 mask shifted by k native pixels."""
    import cv2

    from lungseg.evaluation import assd

    reference = np.zeros((960, 128), np.uint8)
    reference[300:700, 30:90] = 1
    prediction = np.roll(reference, k, axis=0)  # k rows down
    spacing = (0.1, 0.25)  # mm per row, per column
    assert hd95(reference, prediction) == pytest.approx(k)
    assert hd95(reference, prediction, spacing) == pytest.approx(k * 0.1)
    metrics = image_metrics(reference, prediction, spacing)
    assert metrics["hd95"] == pytest.approx(k) and metrics["hd95_mm"] == pytest.approx(k * 0.1)
    assert 0 < metrics["assd"] < k and 0 < metrics["assd_mm"] <= k * 0.1
    assert assd(reference, prediction, (0.2, 0.2)) == pytest.approx(metrics["assd"] * 0.2)
    assert assd(reference, reference) == 0.0
    sideways = np.roll(reference, k, axis=1)
    assert hd95(reference, sideways, spacing) == pytest.approx(k * 0.25)
    # Squashed to 256 x 256 (the model's resolution) the same shift reads k * 256 / 960 px.
    if k == 15:
        small = [cv2.resize(m, (256, 256), interpolation=cv2.INTER_NEAREST_EXACT)
                 for m in (reference, prediction)]
        assert hd95(*small) == pytest.approx(4.0)


def test_masks_of_different_sizes_are_scored_on_the_models_path():
    from lungseg.scoring import score_masks

    references = [np.ones((2, 2), np.uint8), np.zeros((3, 1), np.uint8)]
    predictions = [np.ones((2, 2), np.uint8), np.ones((3, 1), np.uint8)]
    scores = score_masks(["a", "b"], references, predictions, dice_batch=1)
    metrics = scores.metrics
    assert metrics["dice"] == pytest.approx((1.0 + 1 / 4) / 2)  # (2*4+1)/(4+4+1), then 1/(0+3+1)
    assert metrics["iou"] == pytest.approx((1.0 + 1 / 4) / 2)  # (4+1)/(4+1), then 1/(3+1)
    assert metrics["dice_global"] == pytest.approx((2 * 4 + 1) / (4 + 7 + 1))
    assert metrics["binary_accuracy"] == pytest.approx(4 / 7)
    assert metrics["dice_per_image"] == pytest.approx(0.5)  # 1, and 0 for ribs on an empty frame
    assert (metrics["frames"], metrics["empty_references"], metrics["full_predictions"]) == (2, 0.5, 1.0)
    assert [row["frame"] for row in scores.rows] == ["a", "b"]
    # One batch of both frames pools their seven pixels: the global Dice.
    assert batch_dice(references, predictions, batch_size=2) == pytest.approx(9 / 12)


def test_notebook_order_is_the_permutation_keras_drew_with_seed_1():
    # keras_preprocessing's Iterator seeds NumPy with seed + batches seen (1 + 0) and draws
    # np.random.permutation(n) before the first batch; Default_testset's 80 rows went so.
    assert notebook_order(80)[:8].tolist() == [63, 27, 31, 69, 46, 47, 53, 74]


def test_score_frames_batches_the_paper_dice_in_the_order_given():
    import keras

    from lungseg.data import FrameSet
    from lungseg.scoring import score_frames, stage_dice_batch

    # One pixel each: a hit (t 1, p 1), a miss (1, 0), a false alarm (0, 1), nothing (0, 0).
    truth = np.zeros((4, 2, 2, 1), np.uint8)
    truth[[0, 1], 0, 0] = 1
    images = np.zeros((4, 2, 2, 1), np.uint8)
    images[[0, 2], 0, 0] = 255
    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs))  # probability = gray / 255
    frames = FrameSet(list("abcd"), list("abcd"), images, truth)
    # In list order the batches are (a, b), (c, d): (2+1)/(2+1+1) = 3/4 and 1/(1+1) = 1/2.
    assert score_frames(model, frames, dice_batch=2).metrics["dice"] == pytest.approx(0.625)
    # Ordered a, d, b, c: (2+1)/(1+1+1) = 1 and 1/(1+1+1) = 1/3.
    scores = score_frames(model, frames, dice_batch=2, order=[0, 3, 1, 2])
    assert scores.metrics["dice"] == pytest.approx(2 / 3)
    assert scores.metrics["dice_global"] == pytest.approx(3 / 5)  # one batch: order does not matter
    assert [row["frame"] for row in scores.rows] == list("abcd")  # rows stay in frame order
    assert (stage_dice_batch("pretrain"), stage_dice_batch("stage1"), stage_dice_batch("fold_1")) == (30, 20, 20)
