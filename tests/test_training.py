"""Training on small models: a bfloat16 fine-tuning, collapse noticed and stopped, the ImageNet
fallback (the tiny full-size runs end to end: test_tiny_runs.py)."""

import shutil

import keras
import numpy as np
import pytest

from conftest import TINY, narrow_xunet, run_script
from lungseg.files import read_json
from test_tiny_runs import same


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
    # The first line of the log names the precision (with the tests' oneDNN off, a warning
    # that it is slow, on stderr).
    assert (run / "train.log").read_text().startswith("warning: mixed_bfloat16 will likely train slower")
    assert "warning: mixed_bfloat16" in capsys.readouterr().err
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
    assert "warning: continuing with a randomly initialised VGG16 encoder" in capsys.readouterr().err
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
    run = thin_target["out"] / name
    log = (run / "train.log").read_text()  # stdout and the warnings on stderr, in their order
    epoch_lines = [line for line in log.splitlines() if "] epoch " in line and "/6:" in line]
    warning = next(line for line in log.splitlines() if line.startswith("warning: ") and " epoch 3: " in line)
    assert warning in capsys.readouterr().err
    assert "collapsed to all" in warning and f"{COLLAPSE_EPOCHS} epochs running" in warning
    # The warning comes right after epoch 3, before any later epoch.
    assert log.index(warning) > log.index(epoch_lines[2]) and len(epoch_lines) == (3 if stop else 6)
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


def test_a_small_training_part_trains_as_long_as_the_budget_frames(narrow_pretrained, tiny_lus, tmp_path, capsys):
    """``--budget-frames 10`` with 4 training frames a fold and 1 epoch: ceil(1 x 10 / 4) = 3
    epochs, said in the log and run (history.csv, metrics); the loss's weights said with them."""
    import csv

    from lungseg.config import StageConfig, make_config
    from lungseg.training import lus_stage

    assert run_script("train_xunet", "--data", tiny_lus, "--pretrained", narrow_pretrained, "--out", tmp_path,
                      "--name", "budget", "--epochs", "1", "--fold", "1", *TINY, "--lus-frames", "8",
                      "--budget-frames", "10", "--loss", "dice_bce", "--bce-weight", "0.25") == 0
    out = capsys.readouterr().out
    assert ("fold 1/2] 3 epochs instead of 1: 4 training frames, trained as long as 10 would be "
            "(--budget-frames)") in out
    assert ("4 training and 4 validation frames; 3 epochs (one pass per epoch), batch 4, Adam 0.001, "
            "loss dice_bce (cross-entropy x 0.25)") in out
    fold = tmp_path / "budget" / "fold_1"
    assert read_json(fold / "metrics.json")["epochs"] == 3
    with open(fold / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    assert read_json(tmp_path / "budget" / "config.json")["budget_frames"] == 10
    # The sound preset's 100 frames, at its 8 epochs: 17 frames take 48 epochs, 99 take 9, and
    # 100 or more keep 8. The paper's (0) never changes a stage.
    sound, paper = make_config("xunet", "s", "sound"), make_config("xunet", "p")
    stage = StageConfig(8, 4, 1e-4)
    assert [lus_stage(sound, stage, n, "x").epochs for n in (17, 99, 100, 400)] == [48, 9, 8, 8]
    assert lus_stage(paper, stage, 1, "x") is stage


def test_all_frames_train_on_every_frame_and_frames_left_out_are_named(narrow_pretrained, tiny_lus, tmp_path,
                                                                      capsys):
    """``--lus-frames all`` (the sound preset's): every frame of --data and its mirror image,
    counted so in the results table; ``--lus-frames N`` that leaves frames of --data out (the
    first N/2 in name order) says how many in one warning."""
    data = tmp_path / "scans"  # tiny_lus renamed: names not numbered as the paper's
    for kind, prefix in (("IMG", "img_"), ("MASK", "mask_")):
        (data / kind).mkdir(parents=True)
        for path in (tiny_lus / kind).iterdir():
            shutil.copy(path, data / kind / path.name.replace(f"{prefix}lung_pos", f"{prefix}scan"))
    argv = ["--data", data, "--pretrained", narrow_pretrained, "--out", tmp_path / "runs", "--epochs", "1",
            "--fold", "1", *TINY]
    assert run_script("train_xunet", *argv, "--name", "some", "--lus-frames", "8") == 0
    warning = (f"warning: {data}: 8 of its 12 frames are left out (--lus-frames 8 takes the first 4 "
               "in name order); --lus-frames all trains on every frame")
    assert warning in capsys.readouterr().err
    # Warned before the run folder existed, and still in its log.
    assert warning in (tmp_path / "runs" / "some" / "train.log").read_text()

    assert run_script("train_xunet", *argv, "--name", "all", "--lus-frames", "all") == 0
    out = capsys.readouterr().out
    assert "LUS frames: 24; all 12 frames and their mirror images" in out and "left out" not in out
    run = tmp_path / "runs" / "all"
    assert read_json(run / "config.json")["lus_frames"] == "all"
    assert len(read_json(run / "splits.json")["lus_frames"]) == 24
    assert run_script("evaluate", run, "--out", tmp_path / "results", "--allow-partial") == 0
    assert "| 24 (with flips); " in (tmp_path / "results" / "results.md").read_text()
