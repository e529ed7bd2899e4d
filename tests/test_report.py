"""evaluate.py end to end on the tiny runs: every file, the table matches summary.json."""

import csv

import cv2
import numpy as np
import pytest

from conftest import run_script
from lungseg.config import make_config
from lungseg.files import read_json
from lungseg.report import Experiment, make_figures

FIGURES = ("overlays.png", "training_curves.png", "boxplots.png")


@pytest.fixture(scope="module")
def results(vunet_run, xunet_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "res"
    code = run_script("evaluate", vunet_run["dir"], xunet_run["dir"], "--out", out, "--save-masks")
    return {"code": code, "out": out}


def table_rows(path):
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    return [dict(zip(columns, (cell.strip() for cell in row.strip("|").split("|")))) for row in rows]


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


def test_dice_against_frames_figure_when_runs_differ_in_size():
    experiments = []
    rng = np.random.default_rng(0)
    for n, model in ((200, "vunet"), (400, "vunet"), (200, "xunet"), (400, "xunet")):
        config = make_config(model, f"{model}{n}", lus_frames=n, out="/nonexistent")
        experiment = Experiment(label=f"{model}{n}", model=model, models={"fold_1": None, "fold_2": None}, config=config)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:6] = 1
        experiment.predictions = {"f": (rng.integers(0, 255, (8, 8)), mask, mask)}
        experiment.fold_dice = {"fold_1": 0.8, "fold_2": 0.82}
        experiment.rows = [{"dice": 1.0, "spurious": 0}]
        experiments.append(experiment)
    built = make_figures(experiments)
    assert set(built) == {"overlays", "boxplots", "dice_vs_frames"}
    line_axes = built["dice_vs_frames"].axes[0]
    assert len([line for line in line_axes.lines if len(line.get_xdata()) == 2]) >= 2
