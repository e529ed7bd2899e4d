"""evaluate.py in native units, on a folder of masks, with prediction options; the figure's spread."""

import csv
import logging
import shutil

import numpy as np
import pytest

from conftest import run_script
from markdown_tables import gfm_tables
from lungseg.files import read_json
from lungseg.report import Experiment, Scored, spread_frames


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_native_metrics_with_spacing_and_options_on_a_test_set(narrow_run, tiny_lus, tmp_path):
    out = tmp_path / "r"
    code = run_script("evaluate", narrow_run, "--test", tiny_lus, "--out", out, "--spacing", "0.2",
                      "--ensemble", "--tta", "flip", "--min-size", "20", "--save-masks")
    assert code == 0
    summary = read_json(out / "summary.json")
    assert summary["per_image_resolution"] == "native" and summary["pixel_spacing_mm"] == [0.2, 0.2]
    labels = [e["experiment"] for e in summary["experiments"]]
    assert labels == ["x", "x+ensemble+flip+min20"]
    plain, varied = summary["experiments"]
    assert plain["prediction"] == "plain"
    assert varied["prediction"] == "fold ensemble; flip TTA; components under 20 px removed"
    assert list(varied["fold_metrics"]) == ["ensemble"]
    rows = rows_of(out / "per_image.csv")
    hd_px = [float(r["hd95"]) for r in rows if r["hd95"]]
    hd_mm = [float(r["hd95_mm"]) for r in rows if r["hd95_mm"]]
    assert hd_px and hd_mm == pytest.approx([0.2 * v for v in hd_px])
    text = (out / "results.md").read_text()
    assert "at each frame's own size, pixel spacing 0.2 x 0.2 mm" in text and "HD95 (mm)" in text
    assert "| x+ensemble+flip+min20 | X-Unet | fold ensemble; flip TTA;" in text
    (header, table), = gfm_tables(text)  # renders as a table: 18 cells in every row
    assert len(header) == 18 and header[-3:-1] == ["HD95 (mm)", "ASSD (mm)"]
    assert [len(row) for row in table] == [18, 18] and table[1][0] == "x+ensemble+flip+min20"
    # masks are written at each frame's own size (960 x 128) when scored natively
    import cv2

    mask = cv2.imread(str(next((out / "masks" / "x+ensemble+flip+min20" / "ensemble").glob("*.png"))), 0)
    assert mask.shape == (960, 128)

    # The variant's masks, scored as a folder without any model, give the same per-image rows.
    masks_out = tmp_path / "m"
    shutil.copytree(out / "masks" / "x+ensemble+flip+min20" / "ensemble", tmp_path / "predicted")
    assert run_script("evaluate", "--masks", tmp_path / "predicted", "--test", tiny_lus, "--out", masks_out,
                      "--spacing", "0.2") == 0
    from_masks = {r["frame"]: r for r in rows_of(masks_out / "per_image.csv")}
    from_model = {r["frame"]: r for r in rows if r["experiment"] == "x+ensemble+flip+min20"}
    assert set(from_masks) == set(from_model)
    for name, row in from_model.items():
        for metric in ("dice", "hd95_mm", "spurious"):
            assert from_masks[name][metric] == row[metric], (name, metric)


def test_model_resolution_is_an_option(narrow_run, tiny_lus, tmp_path):
    out = tmp_path / "r"
    assert run_script("evaluate", narrow_run, "--test", tiny_lus, "--out", out,
                      "--resolution", "model") == 0
    assert "at the model's input size." in (out / "results.md").read_text()
    assert not [r for r in rows_of(out / "per_image.csv") if r["hd95_mm"]]


def test_mask_folder_errors_name_the_missing_frame(tiny_lus, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_script("evaluate", "--masks", tmp_path / "empty", "--test", tiny_lus, "--out", tmp_path / "o") == 2
    assert "no mask for frame lung_pos" in capsys.readouterr().err
    assert run_script("evaluate", "--masks", tmp_path / "empty", "--out", tmp_path / "o") == 2
    assert "scored against --test" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ensemble_without_a_test_set_is_refused(narrow_run, tmp_path, capsys):
    assert run_script("evaluate", narrow_run, "--ensemble", "--out", tmp_path / "o") == 2
    assert "--ensemble needs --test" in capsys.readouterr().err


def test_overlay_frames_spread_from_worst_to_best_across_groups():
    experiment = Scored(Experiment(label="x", model="xunet", models={}))
    reference = np.ones((4, 4), np.uint8)
    for index in range(12):
        name = f"f{index:02d}"
        experiment.predictions[name] = (reference, reference, reference)
        experiment.rows.append({"frame": name, "dice": index / 11})
        experiment.groups[name] = f"g{index // 3}"  # three consecutive frames per group
    chosen = spread_frames([experiment], 4)
    assert chosen[0] == "f00" and chosen[-1] == "f11"  # worst and best
    groups = [experiment.groups[name] for name in chosen]
    assert len(set(groups)) == 4  # one frame per group, not the first frames of one sequence


@pytest.mark.parametrize("layout", ["lus", "generic"])
def test_what_predict_writes_is_scored_by_evaluate_masks(layout, tmp_path):
    """lungseg-predict on the image folder, then evaluate --masks on its output: every frame is
    found (IMG/img_<name>.tif gives img_<name>_mask.png) and scores as the model itself does."""
    from lungseg.data import write_lus_dataset
    from lungseg.inference import save_inference_model
    from lungseg.commands.predict import main as predict
    from test_predict_cli import brightness_model

    data = write_lus_dataset(tmp_path / "data", n=4, seed=5, shape=(96, 32))
    if layout == "generic":  # images/<name>.tif with masks/<name>.tif
        for folder, prefix, new in (("IMG", "img_", "images"), ("MASK", "mask_", "masks")):
            (data / new).mkdir()
            for file in (data / folder).iterdir():
                file.rename(data / new / file.name[len(prefix):])
            (data / folder).rmdir()
    images = data / ("IMG" if layout == "lus" else "images")
    model = save_inference_model(brightness_model(), tmp_path / "bright.keras")
    assert predict([str(model), str(images), "--out", str(tmp_path / "predicted")]) == 0
    written = sorted(p.name for p in (tmp_path / "predicted").glob("*_mask.png"))
    assert written == sorted(f"{p.stem}_mask.png" for p in images.iterdir()) and len(written) == 4
    assert run_script("evaluate", "--masks", tmp_path / "predicted", "--test", data,
                      "--out", tmp_path / "from_masks") == 0
    assert run_script("evaluate", model, "--test", data, "--out", tmp_path / "from_model") == 0
    from_masks = {r["frame"]: r for r in rows_of(tmp_path / "from_masks" / "per_image.csv")}
    from_model = {r["frame"]: r for r in rows_of(tmp_path / "from_model" / "per_image.csv")}
    assert len(from_masks) == 4 and set(from_masks) == set(from_model)
    for name, row in from_model.items():
        for metric in ("dice", "hd95", "spurious"):
            assert from_masks[name][metric] == row[metric], (name, metric)


def test_scoring_many_models_prints_no_retracing_warning(tmp_path, caplog):
    from lungseg.data import write_lus_dataset
    from lungseg.inference import save_inference_model
    from test_predict_cli import brightness_model

    data = write_lus_dataset(tmp_path / "data", n=2, seed=5, shape=(64, 32))
    models = [save_inference_model(brightness_model(-100.0 - k, 0.8), tmp_path / f"m{k}.keras")
              for k in range(7)]  # TensorFlow's note comes from the fifth new predict function on
    # Under pytest TensorFlow's logger hands its records to the root logger: caplog sees them.
    level = logging.getLogger("tensorflow").level
    with caplog.at_level(logging.WARNING):
        assert run_script("evaluate", *models, "--test", data, "--out", tmp_path / "r") == 0
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert logging.getLogger("tensorflow").level == level  # quiet only while scoring
    assert len(read_json(tmp_path / "r" / "summary.json")["experiments"]) == 7


def test_native_scoring_undoes_each_frames_crop_box(tmp_path):
    from test_data_crop import screen_capture

    from lungseg.data.frames import Reading, load_frames
    from lungseg.data.io import write_image
    from lungseg.data.pairs import find_pairs
    from lungseg.report import per_image_rows

    for index in (1, 2):
        frame, _ = screen_capture(seed=index)
        mask = np.zeros_like(frame)
        mask[40:72, 48:80] = 255
        write_image(tmp_path / "images" / f"f{index}.png", frame)
        write_image(tmp_path / "masks" / f"f{index}.png", mask)
    pairs = find_pairs(tmp_path)
    for reading in (Reading(crop="auto"), Reading(crop="auto", keep_aspect=True), Reading()):
        frames = load_frames(pairs, (32, 48), native=True, reading=reading)
        rows, finals = per_image_rows(frames, frames.masks[..., 0])
        # the model-size reference mapped back lands on the native mask: Dice near 1, at 96 x 128
        assert all(final.shape == (96, 128) for final in finals)
        assert all(row["dice"] > 0.9 for row in rows), (reading, rows)
        shifted = np.roll(frames.masks[..., 0], 4, axis=2)  # 4 model columns to the right
        moved = per_image_rows(frames, shifted)[1][0]
        columns = np.flatnonzero(moved.any(axis=0))
        scale = (frames.placements[0].box[3] - frames.placements[0].box[1]) / frames.placements[0].region[3]
        assert abs(columns[0] - (48 + 4 * scale)) <= scale + 1  # moved in native columns
