"""evaluate.py end to end on the tiny runs: every file, the table matches summary.json."""

import csv

import cv2
import numpy as np
import pytest

from conftest import run_script, snapshot
from markdown_tables import gfm_tables
from lungseg.config import make_config
from lungseg.files import read_json
from lungseg.evaluation import aggregate_folds
from lungseg.report import Experiment, Scored, make_figures, read_test_list, trained_on
from lungseg.runs import RunFolder

FIGURES = ("overlays.png", "training_curves.png", "boxplots.png")


@pytest.fixture(scope="module")
def results(vunet_run, xunet_run, module_tmp):
    out = module_tmp / "res"
    code = run_script("evaluate", vunet_run["dir"], xunet_run["dir"], "--out", out, "--save-masks")
    return {"code": code, "out": out}


def table_rows(path):
    """The rows of results.md's table as a GFM viewer renders it, as dicts by header."""
    (header, rows), = gfm_tables(path.read_text())
    assert all(len(row) == len(header) for row in rows)
    return [dict(zip(header, row)) for row in rows]


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


def test_dice_against_frames_figure_when_runs_differ_in_size(tmp_path):
    experiments, summaries = [], []
    rng = np.random.default_rng(0)
    for n, model in ((200, "vunet"), (400, "vunet"), (200, "xunet"), (400, "xunet")):
        config = make_config(model, f"{model}{n}", lus_frames=n, out="/nonexistent")
        run = RunFolder(tmp_path / f"{model}{n}", config)
        experiment = Experiment(label=f"{model}{n}", model=model, models={"fold_1": None, "fold_2": None}, run=run)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:6] = 1
        experiments.append(Scored(experiment, predictions={"f": (rng.integers(0, 255, (8, 8)), mask, mask)},
                                  rows=[{"dice": 1.0, "spurious": 0}]))
        summaries.append({"model": model, "across_folds": {"dice": aggregate_folds({"fold_1": 0.8, "fold_2": 0.82})}})
    built = make_figures(experiments, summaries)
    assert set(built) == {"overlays", "boxplots", "dice_vs_frames"}
    line_axes = built["dice_vs_frames"].axes[0]
    assert len([line for line in line_axes.lines if len(line.get_xdata()) == 2]) >= 2


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


def test_authors_test_list_is_read_as_it_is_and_overlap_counted(tmp_path):
    csv_path = tmp_path / "Default_testset.csv"
    csv_path.write_text(
        ",filename,mask\n"
        "0,Lung_seg_data/NEW_TIF_IMG/img_lung_pos3_445.tif,Lung_seg_data/NEW_TIF_MASK/mask_lung_pos3_445.tif\n"
        "1,Lung_seg_data/NEW_CODES/newcode_gen_images/img_lung_pos2_5_flipped.tif,"
        "Lung_seg_data/NEW_CODES/newcode_gen_masks/mask_lung_pos2_5_flipped.tif\n"
        "2,Lung_seg_data/NEW_TIF_IMG/img_lung_pos2_110.tif,Lung_seg_data/NEW_TIF_MASK/mask_lung_pos2_110.tif\n"
        "3,Lung_seg_data/NEW_CODES/newcode_gen_images/img_lung_pos3_905_flipped.tif,"
        "Lung_seg_data/NEW_CODES/newcode_gen_masks/mask_lung_pos3_905_flipped.tif\n"
    )
    names = read_test_list(csv_path)
    assert names == ["lung_pos3_445", "lung_pos2_5_flipped", "lung_pos2_110", "lung_pos3_905_flipped"]
    # trained on: pos3_445 itself, pos2_5 as its original (the mirror of a listed flip),
    # not pos2_110 (only pos2_115 trained), pos3_905_flipped itself
    training = ["lung_pos3_445", "lung_pos2_5", "lung_pos2_115", "lung_pos3_905_flipped", "lung_pos3_5"]
    assert trained_on(names, training) == 3
    assert trained_on(names, []) == 0


def test_test_list_scores_named_frames_of_the_pool_and_flags_contamination(vunet_run, tmp_path):
    splits = read_json(vunet_run["dir"] / "splits.json")
    fold_1_train = set(splits["folds"][0]["train"])
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
