"""train_vunet.py and train_xunet.py end to end on tiny shapes: files, stages, folds, resume."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY, narrow_xunet, run_script, snapshot
from lungseg.config import RunConfig
from lungseg.files import read_json

STAGE_FILES = ("model.keras", "history.csv", "metrics.json")


def weights_of(path, names):
    model = keras.models.load_model(path, compile=False)
    return {name: [np.array(w) for w in model.get_layer(name).get_weights()] for name in names}


def same(a, b):
    """Whether two lists of weight arrays are equal; they must hold as many arrays, not none."""
    assert len(a) == len(b) > 0, (len(a), len(b))
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# The shared runs are deleted after their last test (conftest); the V-Unet run's tests come
# first, then the X-Unet run's, so that the two runs' files are seldom on disk together.


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
    for metric in ("dice", "dice_global", "dice_per_image", "iou", "binary_accuracy"):
        values = [folds[f][metric] for f in ("fold_1", "fold_2")]
        across = summary["across_folds"][metric]
        assert across["n"] == 2
        assert across["mean"] == pytest.approx(np.mean(values))
        assert across["sd"] == pytest.approx(np.std(values, ddof=1))
        assert across["sd_paper"] == pytest.approx(np.std(values))
        assert all(0.0 <= v <= 1.0 for v in values)
    assert summary["across_folds"]["dice"]["best"] == max(folds, key=lambda f: folds[f]["dice"])
    assert summary["stage1"]["trainable_parameters"] + summary["stage1"]["frozen_parameters"] == 25_854_657
    assert summary["stage1"]["frozen_parameters"] == 14_714_688
    assert folds["fold_1"]["frozen_parameters"] == 0
    # Stage 1 runs len(whole pool) // batch = 16 // 4 steps per epoch over its 13 training
    # frames, as the notebooks did; fine-tuning one pass.
    assert (summary["stage1"]["steps_per_epoch"], summary["stage1"]["training_frames"]) == (4, 13)
    assert folds["fold_1"]["steps_per_epoch"] is None
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
    assert sum(name.endswith("_flipped") for name in validated) == 8
    for fold in splits["folds"]:
        assert not set(fold["train"]) & set(fold["val"])
    assert len(splits["stage1"]["val"]) == round(0.2 * 16)


def test_stage1_keeps_vgg16_weights_and_finetuning_changes_them(vunet_run, vgg_weights):
    encoder = list(vgg_weights.layers)
    assert len(encoder) == 13  # VGG16's convolutions
    stage1 = weights_of(vunet_run["dir"] / "stage1" / "model.keras", encoder + ["decoder1_conv2"])
    fold = weights_of(vunet_run["dir"] / "fold_1" / "model.keras", encoder)
    for name in encoder:
        assert same(stage1[name], vgg_weights.layers[name]), name
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


def test_run_records_what_really_ran(vunet_run, vgg_weights):
    import hashlib

    summary = read_json(vunet_run["dir"] / "summary.json")
    assert summary["encoder_weights_used"] == {"weights": "file", "path": str(vgg_weights.path),
                                               "sha256": vgg_weights.sha256}
    assert summary["display_name"] == "V-Unet"
    versions = summary["environment"]["versions"]
    assert set(versions) == {"lungseg", "tensorflow", "keras", "numpy", "python"}
    assert versions["keras"] == keras.__version__ and versions["numpy"] == np.__version__
    assert summary["environment"]["device_count"]["CPU"] >= 1
    assert summary["environment"]["precision"] == "float32"
    assert summary["environment"]["tf32"] is False  # the paper preset computes true float32
    stage1 = (vunet_run["dir"] / "stage1" / "model.keras").read_bytes()
    assert summary["folds"]["fold_1"]["started_from_sha256"] == hashlib.sha256(stage1).hexdigest()
    history = (vunet_run["dir"] / "stage1" / "history.csv").read_text().splitlines()
    seconds = [float(row.split(",")[history[0].split(",").index("seconds")]) for row in history[1:]]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert summary["stage1"]["train_seconds"] == pytest.approx(sum(seconds), abs=1e-3)
    assert summary["wall_seconds"]["stage1"] >= summary["stage1"]["train_seconds"]


def test_train_log_holds_the_epochs_of_every_invocation(vunet_run):
    log = (vunet_run["dir"] / "train.log").read_text()
    # fold 2 ran first, then fold 1 in a second invocation appending to the same log
    assert log.count("== V-Unet run") == 2
    assert "[V-Unet stage 1] epoch 1/2:" in log and "[V-Unet stage 1] epoch 2/2:" in log
    assert "[V-Unet fold 2/2] epoch 1/1:" in log and "[V-Unet fold 1/2] epoch 1/1:" in log
    assert log.index("fold 2/2] epoch 1/1") < log.index("fold 1/2] epoch 1/1")
    assert "validation Dice" in log and "summary:" in log


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


def test_bfloat16_fine_tuning_reuses_the_pretrained_model_records_its_precision_and_saves_float32(
        narrow_pretrained, tiny_lus, tmp_path, capsys):
    """A fine-tuning run in mixed_bfloat16 from a float32 pre-trained X-Unet (a narrow one,
    conftest.narrow_xunet): it runs no pre-training of its own, trains in bfloat16, config.json
    says so, and its model.keras computes in float32 (so predicting with it gives exactly what
    the same weights give in a float32 model)."""
    from lungseg.models import with_policy

    pretrained = narrow_pretrained
    try:
        # Half the tiny runs' frames (the last --lus-frames counts): a bfloat16 step is slow
        # with the tests' oneDNN off, and one step per epoch shows what is checked here.
        code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", pretrained, "--out", tmp_path,
                          "--name", "bf16", "--epochs", "1", "--fold", "1", "--precision", "mixed_bfloat16",
                          *TINY, "--lus-frames", "8")
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")  # as a fresh process has it
    assert code == 0
    run = tmp_path / "bf16"
    # The pre-trained model is reused: no pre-training stage, the fold fine-tuned from it.
    assert not (run / "pretrain").exists()
    assert (run / "fold_1" / "model.keras").is_file()
    assert read_json(run / "summary.json")["pretrained"] == str(pretrained)
    # The first line names the precision (with the tests' oneDNN off, a warning that it is slow).
    assert "mixed_bfloat16" in capsys.readouterr().out.splitlines()[0]
    assert read_json(run / "config.json")["precision"] == "mixed_bfloat16"
    assert read_json(run / "summary.json")["precision"] == "mixed_bfloat16"

    saved = keras.models.load_model(run / "fold_1" / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert not saved.compiled  # no optimizer state or loss: loads with plain Keras
    same_weights = narrow_xunet()
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


@pytest.mark.full_size
def test_random_encoder_is_recorded_and_named(tiny_lus, tmp_path, capsys):
    code = run_script("train_vunet", "--data", tiny_lus, "--out", tmp_path, "--name", "r",
                      "--encoder-weights", "none", "--epochs", "1", "--fold", "1", *TINY, "--lus-frames", "8")
    assert code == 0
    summary = read_json(tmp_path / "r" / "summary.json")
    assert summary["encoder_weights_used"] == {"weights": "random", "reason": "asked for (--encoder-weights none)"}
    assert summary["display_name"] == "V-Unet (random encoder)"
    out = capsys.readouterr().out
    assert "V-Unet (random encoder)" in out and "the VGG16 encoder was random" in out
    assert run_script("evaluate", tmp_path / "r", "--out", tmp_path / "res", "--allow-partial") == 0
    assert "| r | V-Unet (random encoder) |" in (tmp_path / "res" / "results.md").read_text()


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


def test_quick_preset_without_internet_falls_back_to_random_encoder(no_download, capsys):
    from lungseg.config import make_config
    from lungseg.errors import WeightsUnavailableError
    from lungseg.training import build_stage1_model

    quick = make_config("vunet", "q", "quick", image_size=(32, 32))
    model, used = build_stage1_model(quick)
    assert model.count_params() == 25_854_657
    assert used["weights"] == "random"
    assert used["reason"].startswith("ImageNet weights unavailable (could not download the ImageNet "
                                      "VGG16 weights (Exception: URL fetch failure on https://")
    assert "quick preset falls back" in used["reason"]
    assert "continuing with a randomly initialised VGG16 encoder" in capsys.readouterr().out
    with pytest.raises(WeightsUnavailableError, match="~/.keras/models/"):
        build_stage1_model(make_config("vunet", "p", "paper", image_size=(32, 32)))


@pytest.fixture(scope="module")
def thin_target(module_tmp):
    """Phantom frames of a thin target (the rib's surface line, 1-2 pixels at 96 rows) and a
    tiny stand-in for a pre-trained model, so that X-Unet's fine-tuning runs in seconds."""
    from lungseg.data import write_lus_dataset

    root = module_tmp
    data = write_lus_dataset(root / "lus", n=12, seed=3, target="line", shape=(96, 32))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((96, 32, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    model.save(root / "tiny.keras")
    return {"data": data, "pretrained": root / "tiny.keras", "out": root / "runs"}


@pytest.mark.parametrize("stop", [True, False], ids=["stop-on-collapse", "only-noticed"])
def test_a_collapsing_stage_is_noticed_while_it_happens_and_stopped(thin_target, stop, capsys):
    from lungseg.training import COLLAPSE_EPOCHS

    name = "stop" if stop else "go"
    # Adam at 10 on a thin target: every prediction collapses from the first epoch on.
    code = run_script(
        "train_xunet", "--data", thin_target["data"], "--pretrained", thin_target["pretrained"],
        "--out", thin_target["out"], "--name", name, "--image-size", "96x32", "--lus-frames", "16",
        "--folds", "2", "--fold", "1", "--batch-size", "4", "--epochs", "6", "--lr", "10",
        "--seed", "1", *(["--stop-on-collapse"] if stop else []),
    )
    assert code == 0
    out = capsys.readouterr().out
    run = thin_target["out"] / name
    epoch_lines = [line for line in out.splitlines() if "] epoch " in line and "/6:" in line]
    warning = next(line for line in out.splitlines() if line.startswith("WARNING") and " epoch 3: " in line)
    assert "collapsed to all" in warning and f"{COLLAPSE_EPOCHS} epochs running" in warning
    # The warning comes right after epoch 3, before any later epoch.
    assert out.index(warning) > out.index(epoch_lines[2]) and len(epoch_lines) == (3 if stop else 6)
    metrics = read_json(run / "fold_1" / "metrics.json")
    summary = read_json(run / "summary.json")
    assert metrics["collapse_noticed"]["epoch"] == 3
    assert metrics["epochs_run"] == (3 if stop else 6) and metrics["epochs"] == 6
    assert metrics["stopped_on_collapse"] is stop
    if stop:
        assert "stopping the stage (--stop-on-collapse)" in warning
        assert summary["stopped_on_collapse"] == {"fold_1": 3}
        assert summary["collapse"]["fold_1"].startswith("collapsed to all")
        assert "stopped after epoch 3 of 6" in (run / "train.log").read_text()
    else:
        assert "--stop-on-collapse would end the stage here" in warning
        assert summary["stopped_on_collapse"] == {}
    history = (run / "fold_1" / "history.csv").read_text().splitlines()
    assert "val_empty_on_ribs" in history[0] and "val_full_predictions" in history[0]


def test_collapse_watch_counts_stalled_collapsed_epochs_and_on_from_a_resumed_history():
    from lungseg.training import CollapseWatch

    def row(empty, full, loss):
        return {"val_empty_on_ribs": str(empty), "val_full_predictions": str(full),
                "val_loss": str(loss)}

    healthy, empty, full = row(0.1, 0.0, -0.5), row(0.9, 0.0, -0.1), row(0.0, 0.75, -0.1)
    watch = CollapseWatch("s", stop=True, history=[empty, healthy, empty, full])  # 2 running
    assert (watch.streak, watch.noticed, watch.stopped) == (2, None, False)
    resumed = CollapseWatch("s", stop=True, history=[empty, full, empty])
    assert resumed.stopped and resumed.noticed["epoch"] == 3  # a resumed stage stays stopped
    assert "no progress in validation loss, 3 epochs running" in resumed.noticed["message"]
    assert CollapseWatch("s", stop=False, history=[empty] * 3).stopped is False
    assert CollapseWatch("s", history=[{"val_empty_on_ribs": "nan"}] * 4).streak == 0
    # Empty predictions while the loss keeps falling (cross-entropy learning a thin target
    # first learns the background): no collapse; once the loss stalls, the streak counts.
    learning = [row(1.0, 0.0, loss) for loss in (0.12, 0.09, 0.06, 0.03)]
    assert CollapseWatch("s", history=learning[:1]).streak == 1  # nothing to improve on yet
    assert CollapseWatch("s", history=learning).streak == 0
    stalled = learning + [row(1.0, 0.0, 0.0305), row(1.0, 0.0, 0.0301), row(1.0, 0.0, 0.0302)]
    assert CollapseWatch("s", history=stalled).noticed["epoch"] == 7
