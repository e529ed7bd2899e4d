"""The tiny runs, trained once for this module, and every test that reads them: train_vunet.py
and train_xunet.py end to end (files, stages, folds, what a run records), then evaluate.py on
them (every file, the table, one scoring path with training).

The runs take 32 x 32 frames, 2 folds and 1-2 epochs. The V-Unet run is the suite's one
end-to-end full-size run (VGG16 weights from a file, the paper's parameter counts; its model
files take 100 MB each, whatever the frame size); the X-Unet run and the random-encoder run
build narrow models (conftest.narrow_models), as their checks do not depend on the model's
size (X-Unet's full-size counts: test_models.py). ``make test`` hands each module whole to one
of its two pytest-xdist workers (``--dist loadfile``) and this one first (conftest:
``full_size``); the runs are removed when the module is done (kept if a test failed).
Training on small models and evaluate's pieces: test_training.py, test_report*.py.
"""

import csv
import hashlib
import json
from types import SimpleNamespace

import cv2
import keras
import numpy as np
import pytest

from conftest import TINY, narrow_models, run_script, snapshot
from markdown_tables import gfm_tables
from lungseg.config import RunConfig
from lungseg.files import read_json

pytestmark = pytest.mark.full_size

STAGE_FILES = ("model.keras", "history.csv", "metrics.json")
FIGURES = ("overlays.png", "training_curves.png", "boxplots.png")


def weights_of(path, names):
    model = keras.models.load_model(path, compile=False)
    return {name: [np.array(w) for w in model.get_layer(name).get_weights()] for name in names}


def same(a, b):
    """Whether two lists of weight arrays are equal; they must hold as many arrays, not none."""
    assert len(a) == len(b) > 0, (len(a), len(b))
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def table_rows(path):
    """The rows of results.md's table as a GFM viewer renders it, as dicts by header."""
    (header, rows), = gfm_tables(path.read_text())
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row)) for row in rows]


# --- the runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg_weights(module_tmp):
    """A VGG16 no-top weights file made offline, so stage-1 encoder weights are known: its
    path, sha256 and weights by layer. The V-Unet run deletes the file (59 MB) once trained."""
    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = module_tmp / "vgg" / "vgg16_notop.weights.h5"
    path.parent.mkdir()
    vgg.save_weights(path)
    return SimpleNamespace(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                           layers={layer.name: layer.get_weights() for layer in vgg.layers if layer.weights})


@pytest.fixture(scope="module")
def vunet_run(module_tmp, tiny_lus, vgg_weights):
    """A tiny V-Unet run trained fold 2 first, then fold 1 (so fold gathering is exercised)."""
    out = module_tmp / "v_runs"
    argv = ["--data", tiny_lus, "--out", out, "--name", "v", "--epochs", "2", "1",
            "--encoder-weights", vgg_weights.path, *TINY]
    codes = [run_script("train_vunet", *argv, "--fold", "2")]
    partial = (out / "v" / "summary.json").read_text()
    codes.append(run_script("train_vunet", *argv, "--fold", "1"))
    vgg_weights.path.unlink()  # no test reads it again (finished runs build no stage-1 model)
    return {"dir": out / "v", "argv": argv, "codes": codes, "partial_summary": partial}


@pytest.fixture(scope="module")
def xunet_run(module_tmp, tiny_lus, tiny_salient):
    """A tiny narrow X-Unet run (conftest.narrow_models): pre-training and fold 1, then fold 2
    resuming it (the pre-trained model kept, its set not read again)."""
    out = module_tmp / "x_runs"
    argv = ["--data", tiny_lus, "--salient", tiny_salient, "--out", out, "--name", "x",
            "--epochs", "1", "--freeze", "bottleneck", *TINY]
    with narrow_models():
        codes = [run_script("train_xunet", *argv, "--fold", "1")]
        pretrained = snapshot(out / "x" / "pretrain")
        codes.append(run_script("train_xunet", *argv, "--fold", "2"))
    return {"dir": out / "x", "argv": argv, "codes": codes, "pretrained_after_fold_1": pretrained}


@pytest.fixture(scope="module")
def results(vunet_run, xunet_run, module_tmp):
    out = module_tmp / "res"
    code = run_script("evaluate", vunet_run["dir"], xunet_run["dir"], "--out", out, "--save-masks")
    return {"code": code, "out": out}


# In file order: the random-encoder run first (its folder goes when it passes), then the V-Unet
# run's tests, then those of the X-Unet run and of both (the two runs on disk together).


def test_random_encoder_is_recorded_and_named(tiny_lus, tmp_path, capsys):
    with narrow_models():  # a random encoder: nothing here depends on the model's size
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


def test_each_fold_can_train_its_own_stage1_and_is_then_scored_uncontaminated(tiny_lus, tmp_path, capsys):
    with narrow_models():
        code = run_script("train_vunet", "--data", tiny_lus, "--out", tmp_path, "--name", "f",
                          "--encoder-weights", "none", "--stage1-scope", "fold", "--epochs", "1",
                          *TINY, "--lus-frames", "4", "--no-flips")
    assert code == 0
    run = tmp_path / "f"
    splits = read_json(run / "splits.json")
    assert not (run / "stage1").exists() and "stage1" not in splits  # no stage 1 shared by the folds
    summary = read_json(run / "summary.json")
    assert sorted(summary["stage1_per_fold"]) == ["stage1_fold_1", "stage1_fold_2"]
    assert summary["stage1"] is None and summary["display_name"] == "V-Unet (random encoder)"
    for k in (1, 2):
        stage1 = read_json(run / f"stage1_fold_{k}" / "metrics.json")
        assert stage1["training_frames"] == len(splits["folds"][k - 1]["train"]) == 2  # 4 frames, 2 folds
        assert stage1["frozen_parameters"] > 0  # the encoder
        fold = read_json(run / f"fold_{k}" / "metrics.json")
        assert fold["started_from"] == str(run / f"stage1_fold_{k}" / "model.keras")
    out = capsys.readouterr().out
    assert "[V-Unet stage 1, fold 1/2] epoch 1/1" in out and "[V-Unet stage 1, fold 2/2] epoch 1/1" in out
    assert "stage1_fold_2: Dice" in out
    # No mirror images and no shared stage 1: no fold model trained on a frame it is scored on.
    assert run_script("evaluate", run, "--out", tmp_path / "res") == 0
    experiment = read_json(tmp_path / "res" / "summary.json")["experiments"][0]
    assert experiment["trained_on_test_frames"] is None
    # Its stage-1 Dice is the mean of the folds' own stage 1s, each on its fold's hold-out.
    own = [summary["stage1_per_fold"][f"stage1_fold_{k}"]["dice"] for k in (1, 2)]
    assert experiment["stage1_dice"] == pytest.approx((own[0] + own[1]) / 2)
    assert experiment["stage1_scored_on"] == "each fold's hold-out, mean of 2 stage 1s"
    (header, (row,)), = gfm_tables((tmp_path / "res" / "results.md").read_text())
    assert dict(zip(header, row))["stage-1 Dice"] == f"{experiment['stage1_dice']:.4f} (mean of 2)"


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
    assert ("different configuration (finetune learning_rate: 0.001 in the run, 0.002 now; "
            "stage1 learning_rate: 0.001 in the run, 0.002 now)") in err
    assert snapshot(vunet_run["dir"]) == before


def test_run_records_what_really_ran(vunet_run, vgg_weights):
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


def test_fixed_test_set_scores_every_model_on_the_same_frames(vunet_run, tiny_lus, tmp_path):
    assert run_script("evaluate", vunet_run["dir"], "--test", tiny_lus, "--out", tmp_path / "r") == 0
    with open(tmp_path / "r" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 12
    assert {row["frame"] for row in rows if row["fold"] == "fold_1"} == {row["frame"] for row in rows if row["fold"] == "fold_2"}
    assert "fixed test set" in (tmp_path / "r" / "results.md").read_text()


def test_a_bare_model_needs_a_test_set(vunet_run, tmp_path, capsys):
    model = vunet_run["dir"] / "fold_1" / "model.keras"
    assert run_script("evaluate", model, "--out", tmp_path / "r") == 2
    assert "needs --test DIR" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_test_list_scores_named_frames_of_the_pool_and_flags_contamination(vunet_run, tmp_path):
    splits = read_json(vunet_run["dir"] / "splits.json")
    # Fold 1 fine-tuned the stage-1 model: it trained on stage 1's frames as well as its own.
    fold_1_train = set(splits["folds"][0]["train"]) | set(splits["stage1"]["train"])
    listed = ["lung_pos2_5", "lung_pos3_10_flipped", "lung_pos2_15_flipped", "lung_pos3_20"]
    csv_path = tmp_path / "Default_testset.csv"
    csv_path.write_text(",filename,mask\n" + "".join(
        f"{i},Lung_seg_data/X/img_{name}.tif,Lung_seg_data/Y/mask_{name}.tif\n" for i, name in enumerate(listed)))
    assert run_script("evaluate", vunet_run["dir"], "--test-list", csv_path, "--out", tmp_path / "r") == 0
    summary = read_json(tmp_path / "r" / "summary.json")
    experiment = summary["experiments"][0]
    mirror = lambda n: n[:-8] if n.endswith("_flipped") else n + "_flipped"  # noqa: E731
    expected = sum(1 for n in listed if n in fold_1_train or mirror(n) in fold_1_train)
    assert experiment["trained_on_test_frames"]["fold_1"] == expected
    assert "stage1" in experiment["trained_on_test_frames"]  # stage 1 scored on the list too
    with open(tmp_path / "r" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["frame"] for row in rows if row["fold"] == "fold_2") == sorted(listed)
    text = (tmp_path / "r" / "results.md").read_text()
    assert "contaminated" in text and f"fold_1 {expected}" in text
    assert "V-Unet's decoder stage scored on the test frames" in text


def test_xunet_pretrains_then_finetunes_with_frozen_bottleneck(xunet_run):
    run = xunet_run["dir"]
    assert xunet_run["codes"] == [0, 0]
    assert snapshot(run / "pretrain") == xunet_run["pretrained_after_fold_1"]  # not trained again
    log = (run / "train.log").read_text()
    assert log.count("[X-Unet pre-training] epoch 1/1") == 1 and "pretrain already done" in log
    for stage in ("pretrain", "fold_1", "fold_2"):
        for name in STAGE_FILES:
            assert (run / stage / name).is_file()
    summary = read_json(run / "summary.json")
    assert summary["pretrain"]["frozen_parameters"] == 0
    # The narrow bottleneck: 3*3*16*32 + 32 and 3*3*32*32 + 32 (full size: test_models.py)
    assert summary["folds"]["fold_1"]["frozen_parameters"] == 4_640 + 9_248
    assert summary["freeze"] == ["bottleneck"]
    names = ["bottleneck_conv1", "bottleneck_conv2", "block1_conv1", "decoder1_conv2"]
    pretrained = weights_of(run / "pretrain" / "model.keras", names)
    tuned = weights_of(run / "fold_1" / "model.keras", names)
    assert same(tuned["bottleneck_conv1"], pretrained["bottleneck_conv1"])
    assert same(tuned["bottleneck_conv2"], pretrained["bottleneck_conv2"])
    assert not same(tuned["block1_conv1"], pretrained["block1_conv1"])
    assert not same(tuned["decoder1_conv2"], pretrained["decoder1_conv2"])


def test_evaluate_writes_every_file(results):
    assert results["code"] == 0
    out = results["out"]
    for name in ("per_image.csv", "summary.json", "results.md", *FIGURES):
        assert (out / name).is_file(), name
    assert not (out / "dice_vs_frames.png").exists()  # both runs used the same number of frames
    for name in FIGURES:
        assert cv2.imread(str(out / name)) is not None
    masks = sorted((out / "masks" / "v" / "fold_1").glob("*.png"))
    assert len(masks) == 8 and set(np.unique(cv2.imread(str(masks[0]), 0))) <= {0, 255}


def test_results_table_has_one_row_per_run_with_the_summary_numbers(results):
    summary = read_json(results["out"] / "summary.json")
    rows = table_rows(results["out"] / "results.md")
    assert [row["experiment"] for row in rows] == ["v", "x"]
    for row, experiment in zip(rows, summary["experiments"]):
        assert row["model"] == {"v": "V-Unet", "x": "X-Unet"}[row["experiment"]]
        mean, sd = row["fold Dice (mean ± SD)"].split(" ± ")
        assert float(mean) == pytest.approx(experiment["fold_dice_mean"], abs=5e-5)
        assert float(sd) == pytest.approx(experiment["fold_dice_sd"], abs=5e-5)
        assert float(row["stage-1 Dice"]) == pytest.approx(experiment["stage1_dice"], abs=5e-5)
        assert row["best fold"].startswith(experiment["best_fold"])
        assert float(row["spurious components / image"]) == pytest.approx(experiment["spurious_per_image"], abs=5e-3)
    assert rows[1]["fine-tuning"] == "frozen: bottleneck"
    assert "Dice and IoU are NaN when both" in (results["out"] / "results.md").read_text()


def test_per_image_csv_holds_each_held_out_frame_once_per_run(results):
    with open(results["out"] / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    for experiment in ("v", "x"):
        frames = [row["frame"] for row in rows if row["experiment"] == experiment]
        assert len(frames) == len(set(frames)) == 16  # two folds' validation frames, flips included
    summary = read_json(results["out"] / "summary.json")
    v = summary["experiments"][0]
    dice = [float(row["dice"]) for row in rows if row["experiment"] == "v" and row["dice"] != "nan"]
    assert v["per_image"]["metrics"]["dice"]["count"] == len(dice)
    assert v["per_image_dice_mean"] == pytest.approx(np.mean(dice))


def test_held_out_scores_say_which_frames_a_fold_model_trained_on(results, vunet_run, xunet_run):
    """The paper's split puts a frame and its mirror image on both sides, and V-Unet's folds all
    fine-tune one stage 1 trained on most of their held-out frames: both are counted."""
    evaluated = {e["experiment"]: e for e in read_json(results["out"] / "summary.json")["experiments"]}
    mirror = lambda n: n[:-8] if n.endswith("_flipped") else n + "_flipped"  # noqa: E731
    for label, run in (("v", vunet_run), ("x", xunet_run)):
        splits = read_json(run["dir"] / "splits.json")
        shared = set(splits["stage1"]["train"]) if label == "v" else set()  # X-Unet's is salient objects
        expected = {}
        for k, fold in enumerate(splits["folds"], 1):
            seen = set(fold["train"]) | shared
            expected[f"fold_{k}"] = sum(1 for n in fold["val"] if n in seen or mirror(n) in seen)
        assert evaluated[label]["trained_on_test_frames"] == expected
        assert all(expected.values())  # with 8 held-out frames a fold, some mirror images are in training
    cells = {row["experiment"]: row["test frames trained on"] for row in table_rows(results["out"] / "results.md")}
    assert cells["v"] == ", ".join(f"{fold} {n}" for fold, n in evaluated["v"]["trained_on_test_frames"].items())


def test_evaluation_gives_the_fold_dice_training_recorded(results, vunet_run, xunet_run):
    """One scoring path: evaluate.py's held-out fold scores are summary.json's, to 1e-6."""
    evaluated = {e["experiment"]: e for e in read_json(results["out"] / "summary.json")["experiments"]}
    for label, run in (("v", vunet_run), ("x", xunet_run)):
        trained = read_json(run["dir"] / "summary.json")["folds"]
        for fold in ("fold_1", "fold_2"):
            for metric in ("dice", "dice_global", "dice_per_image", "iou", "binary_accuracy"):
                assert evaluated[label]["fold_metrics"][fold][metric] == pytest.approx(
                    trained[fold][metric], abs=1e-6), (label, fold, metric)


def test_a_copied_run_evaluates_the_same_from_anywhere(results, vunet_run, tmp_path, monkeypatch, copy_of):
    # Hard links: evaluating must not write there, and the snapshot would see a replaced file.
    copied = copy_of(vunet_run["dir"], tmp_path / "elsewhere" / "moved_v", link=True)
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    before = snapshot(tmp_path / "elsewhere")
    assert run_script("evaluate", copied, "--out", tmp_path / "out") == 0
    assert snapshot(tmp_path / "elsewhere") == before
    assert not any(third.iterdir())
    here = read_json(tmp_path / "out" / "summary.json")["experiments"][0]
    in_place = read_json(results["out"] / "summary.json")["experiments"][0]
    for key in ("fold_metrics", "per_image", "stage1_dice", "across_folds", "training_frames"):
        assert here[key] == in_place[key], key
    assert here["experiment"] == "moved_v"
