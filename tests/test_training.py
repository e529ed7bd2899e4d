"""train_vunet.py and train_xunet.py end to end on tiny shapes: files, stages, folds, resume."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY, run_script, snapshot
from lungseg.config import RunConfig
from lungseg.files import read_json

STAGE_FILES = ("model.keras", "history.csv", "metrics.json")


def weights_of(path, names):
    model = keras.models.load_model(path, compile=False)
    return {name: [np.array(w) for w in model.get_layer(name).get_weights()] for name in names}


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_vunet_run_folder_holds_every_file(vunet_run):
    run = vunet_run["dir"]
    assert vunet_run["codes"] == [0, 0]
    for name in ("config.json", "splits.json", "summary.json"):
        assert (run / name).is_file()
    for stage in ("stage1", "fold_1", "fold_2"):
        for name in STAGE_FILES:
            assert (run / stage / name).is_file(), f"{stage}/{name}"
        assert not (run / stage / "state").exists()  # resume state is cleared when a stage ends
    history = (run / "fold_1" / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:1] == ["epoch"] and len(history) == 2  # header + 1 epoch
    assert not list(run.rglob(".tmp-*"))


def test_summary_holds_per_fold_metrics_and_mean_sd(vunet_run):
    summary = read_json(vunet_run["dir"] / "summary.json")
    assert summary["complete"] is True and summary["folds_missing"] == []
    folds = summary["folds"]
    assert sorted(folds) == ["fold_1", "fold_2"]
    for metric in ("dice", "iou", "binary_accuracy"):
        values = [folds[f][metric] for f in ("fold_1", "fold_2")]
        assert summary["mean"][metric] == pytest.approx(np.mean(values))
        assert summary["sd"][metric] == pytest.approx(np.std(values, ddof=1))
        assert all(0.0 <= v <= 1.0 for v in values)
    assert summary["best_fold"] == max(folds, key=lambda f: folds[f]["dice"])
    assert summary["stage1"]["trainable_parameters"] + summary["stage1"]["frozen_parameters"] == 25_854_657
    assert summary["stage1"]["frozen_parameters"] == 14_714_688
    assert folds["fold_1"]["frozen_parameters"] == 0
    for key in ("empty_predictions", "empty_on_ribs", "full_predictions", "collapse", "best_epoch"):
        assert key in folds["fold_1"]


def test_fold_option_runs_one_fold_and_a_later_run_gathers(vunet_run):
    partial = json.loads(vunet_run["partial_summary"])
    assert list(partial["folds"]) == ["fold_2"]
    assert partial["complete"] is False and partial["folds_missing"] == [1]
    assert read_json(vunet_run["dir"] / "summary.json")["complete"] is True


def test_splits_cover_every_frame_once_per_fold_set(vunet_run):
    splits = read_json(vunet_run["dir"] / "splits.json")
    validated = [name for fold in splits["folds"] for name in fold["val"]]
    assert len(validated) == len(set(validated)) == 16
    assert sum(name.endswith("_flip") for name in validated) == 8
    for fold in splits["folds"]:
        assert not set(fold["train"]) & set(fold["val"])
    assert len(splits["stage1"]["val"]) == round(0.2 * 16)


def test_stage1_keeps_vgg16_weights_and_finetuning_changes_them(vunet_run, vgg_weights):
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    vgg.load_weights(vgg_weights)
    encoder = [layer.name for layer in vgg.layers if layer.weights]
    stage1 = weights_of(vunet_run["dir"] / "stage1" / "model.keras", encoder + ["decoder1_conv2"])
    fold = weights_of(vunet_run["dir"] / "fold_1" / "model.keras", encoder)
    for name in encoder:
        assert same(stage1[name], vgg.get_layer(name).get_weights()), name
        assert not same(fold[name], stage1[name]), name


def test_config_json_reloads_into_the_same_config(vunet_run):
    config = RunConfig.from_dict(read_json(vunet_run["dir"] / "config.json"))
    assert config.model == "vunet" and config.image_size == (32, 32) and config.folds == 2
    assert (config.stage1.epochs, config.finetune.epochs) == (2, 1)
    assert RunConfig.from_dict(json.loads(config.to_json())) == config


def test_finished_run_is_refused_without_overwrite(vunet_run, capsys):
    before = snapshot(vunet_run["dir"])
    assert run_script("train_vunet", *vunet_run["argv"]) == 2
    assert "holds a finished run; use --overwrite" in capsys.readouterr().err
    assert snapshot(vunet_run["dir"]) == before


def test_changed_configuration_is_refused(vunet_run, capsys):
    before = snapshot(vunet_run["dir"])
    argv = [a if a != "1e-3" else "2e-3" for a in vunet_run["argv"]]
    assert run_script("train_vunet", *argv) == 2
    err = capsys.readouterr().err
    assert "different configuration (finetune, stage1)" in err
    assert snapshot(vunet_run["dir"]) == before


def test_xunet_pretrains_then_finetunes_with_frozen_bottleneck(xunet_run):
    run = xunet_run["dir"]
    assert xunet_run["code"] == 0
    for stage in ("pretrain", "fold_1", "fold_2"):
        for name in STAGE_FILES:
            assert (run / stage / name).is_file()
    summary = read_json(run / "summary.json")
    assert summary["pretrain"]["frozen_parameters"] == 0
    assert summary["folds"]["fold_1"]["frozen_parameters"] == 14_157_824
    assert summary["freeze"] == ["bottleneck"]
    names = ["bottleneck_conv1", "bottleneck_conv2", "block1_conv1", "decoder1_conv2"]
    pretrained = weights_of(run / "pretrain" / "model.keras", names)
    tuned = weights_of(run / "fold_1" / "model.keras", names)
    assert same(tuned["bottleneck_conv1"], pretrained["bottleneck_conv1"])
    assert same(tuned["bottleneck_conv2"], pretrained["bottleneck_conv2"])
    assert not same(tuned["block1_conv1"], pretrained["block1_conv1"])
    assert not same(tuned["decoder1_conv2"], pretrained["decoder1_conv2"])


def test_pretrained_model_is_reused_without_pretraining(xunet_run, tiny_lus, tmp_path):
    pretrained = xunet_run["dir"] / "pretrain" / "model.keras"
    code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", pretrained, "--out", tmp_path,
                      "--name", "reuse", "--epochs", "1", "--fold", "1", *TINY)
    assert code == 0
    assert not (tmp_path / "reuse" / "pretrain").exists()
    assert (tmp_path / "reuse" / "fold_1" / "model.keras").is_file()
    assert read_json(tmp_path / "reuse" / "summary.json")["pretrained"] == str(pretrained)


def test_collapse_is_reported_in_words():
    from lungseg.training import collapse_message

    healthy = {"empty_on_ribs": 0.1, "empty_predictions": 0.2, "full_predictions": 0.0}
    assert collapse_message(healthy) is None
    collapsed = dict(healthy, empty_on_ribs=0.9, empty_predictions=0.92)
    assert collapse_message(collapsed) == (
        "collapsed to all background: 90% of validation frames with ribs got an empty "
        "prediction (92% of all predictions are empty)"
    )
    assert "all foreground: 80%" in collapse_message(dict(healthy, full_predictions=0.8))


def test_quick_preset_without_internet_falls_back_to_random_encoder(tmp_path, monkeypatch, capsys):
    from lungseg.config import make_config
    from lungseg.errors import WeightsUnavailableError
    from lungseg.training import build_stage1_model

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    quick = make_config("vunet", "q", "quick", image_size=(32, 32))
    assert build_stage1_model(quick).count_params() == 25_854_657
    assert "continuing with a randomly initialised VGG16 encoder" in capsys.readouterr().out
    with pytest.raises(WeightsUnavailableError, match="~/.keras/models/"):
        build_stage1_model(make_config("vunet", "p", "paper", image_size=(32, 32)))



def test_bfloat16_run_records_its_precision_and_saves_float32(xunet_run, tiny_lus, tmp_path, capsys):
    """A fine-tuning run in mixed_bfloat16 from a float32 pre-trained model: it trains in
    bfloat16, config.json says so, and its model.keras computes in float32 (so predicting with
    it gives exactly what the same weights give in a float32 model)."""
    from lungseg.models import build_xunet, with_policy

    pretrained = xunet_run["dir"] / "pretrain" / "model.keras"
    try:
        code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", pretrained, "--out", tmp_path,
                          "--name", "bf16", "--epochs", "1", "--fold", "1", "--precision", "mixed_bfloat16",
                          *TINY)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")  # as a fresh process has it
    assert code == 0
    # The first line names the precision (with the tests' oneDNN off, a warning that it is slow).
    assert "mixed_bfloat16" in capsys.readouterr().out.splitlines()[0]
    run = tmp_path / "bf16"
    assert read_json(run / "config.json")["precision"] == "mixed_bfloat16"
    assert read_json(run / "summary.json")["precision"] == "mixed_bfloat16"

    saved = keras.models.load_model(run / "fold_1" / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert saved.loss.__name__ == "dice_loss"  # compiled as before, for plain-Keras loading
    same_weights = build_xunet((32, 32, 1))
    same_weights.set_weights(saved.get_weights())
    frames = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 1)).astype(np.uint8)
    expected = same_weights.predict(frames, verbose=0)
    # Tolerance 0: the saved model is float32, the same graph as the rebuilt one.
    np.testing.assert_array_equal(saved.predict(frames, verbose=0), expected)
    # ... whereas the weights computed in bfloat16, as in training, give other values.
    in_bf16 = with_policy(saved, "mixed_bfloat16").predict(frames, verbose=0)
    assert not np.array_equal(in_bf16, expected)
    # Fine-tuning changed the weights it started from.
    start = keras.models.load_model(pretrained, compile=False)
    assert not same(start.get_layer("block1_conv1").get_weights(), saved.get_layer("block1_conv1").get_weights())
