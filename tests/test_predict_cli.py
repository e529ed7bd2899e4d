"""lungseg-predict on run folders, clinical inputs and folders of patients; post-processing."""

import csv

import cv2
import keras
import numpy as np
import pytest

from lungseg.config import make_config
from lungseg.inference import save_inference_model
from lungseg.postprocess import PostProcess, frame_record, postprocess
from lungseg.commands.predict import main
from lungseg.predict import predict_probabilities
from test_data_sources import write_12_bit_png, write_dicom, write_tiff_pages, write_video


def brightness_model(bias=-127.5, scale=1.0):
    """Pixel probability sigmoid(scale * value + bias): rib where the frame is bright."""
    inputs = keras.Input((32, 32, 1), name="image")
    outputs = keras.layers.Conv2D(
        1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(scale),
        bias_initializer=keras.initializers.Constant(bias),
    )(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_inference_model(brightness_model(), tmp_path_factory.mktemp("m") / "bright.keras")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "run"
    root.mkdir()
    config = make_config("xunet", "run", "quick", folds=2, image_size=(32, 32))
    (root / "config.json").write_text(config.to_json())
    models = [brightness_model(-100.0, 0.8), brightness_model(-150.0, 1.2)]
    for k, model in enumerate(models, start=1):
        save_inference_model(model, root / f"fold_{k}" / "model.keras")
        (root / f"fold_{k}" / "metrics.json").write_text("{}")
    return {"root": root, "models": models}


def read_rows(out):
    with open(out / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_prediction_is_the_mean_of_its_folds(run_folder, tmp_path, capsys):
    frame = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    out = tmp_path / "out"
    assert main([str(run_folder["root"]), str(tmp_path / "f.png"), "--out", str(out),
                 "--save-probabilities"]) == 0
    assert "mean of 2 fold models" in capsys.readouterr().out
    saved = cv2.imread(str(out / "f_prob.png"), cv2.IMREAD_UNCHANGED) / 65535.0
    expected = np.mean([predict_probabilities(m, [frame])[0] for m in run_folder["models"]], axis=0)
    np.testing.assert_allclose(saved, expected, atol=1e-5)
    mask = cv2.imread(str(out / "f_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask > 0, expected > 0.5)
    row, = read_rows(out)
    assert int(row["rib_area_px"]) == int((expected > 0.5).sum())
    assert float(row["mean_probability"]) == pytest.approx(expected[expected > 0.5].mean(), abs=1e-4)
    assert row["rib_area_mm2"] == ""  # no spacing known

    one = tmp_path / "one"
    assert main([str(run_folder["root"]), str(tmp_path / "f.png"), "--out", str(one), "--fold", "2",
                 "--save-probabilities", "--tta", "flip"]) == 0
    saved = cv2.imread(str(one / "f_prob.png"), cv2.IMREAD_UNCHANGED) / 65535.0
    np.testing.assert_allclose(saved, predict_probabilities(run_folder["models"][1], [frame])[0], atol=1e-5)


def test_three_page_tiff_gives_three_masks(model_path, tmp_path):
    pages = [np.full((40, 20), 50 * k, np.uint8) for k in (1, 3, 5)]
    write_tiff_pages(tmp_path / "stack.tif", pages)
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "stack.tif"), "--out", str(out)]) == 0
    masks = sorted(p.name for p in out.glob("*_mask.png"))
    assert masks == ["stack_0001_mask.png", "stack_0002_mask.png", "stack_0003_mask.png"]
    rows = read_rows(out)
    assert [r["frame"] for r in rows] == ["1", "2", "3"]
    assert [int(r["rib_area_px"]) for r in rows] == [0, 800, 800]  # 150 and 250 are bright


def test_video_gives_masks_and_an_overlay_video(model_path, tmp_path):
    write_video(tmp_path / "cine.avi", 5)
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "cine.avi"), "--out", str(out)]) == 0
    assert len(list(out.glob("cine_*_mask.png"))) == 5
    assert not list(out.glob("*_overlay.png"))
    capture = cv2.VideoCapture(str(out / "cine_overlay.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()
    assert len(read_rows(out)) == 5


def test_multi_frame_dicom_gives_masks_and_its_spacing(model_path, tmp_path):
    frames = np.zeros((2, 16, 24), np.uint16)
    frames[1, 4:8, 4:10] = 4095  # 24 bright pixels in the second frame
    write_dicom(tmp_path / "scan.dcm", frames, spacing=(0.2, 0.3))
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "scan.dcm"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["scan_0001_mask.png", "scan_0002_mask.png"]
    first, second = read_rows(out)
    assert (second["row_spacing_mm"], second["column_spacing_mm"]) == ("0.2", "0.3")
    assert int(second["rib_area_px"]) == 24 and int(first["rib_area_px"]) == 0
    assert float(second["rib_area_mm2"]) == pytest.approx(24 * 0.2 * 0.3)
    assert int(second["components"]) == 1


def test_folders_are_searched_recursively_and_mirrored(model_path, tmp_path, capsys):
    data = tmp_path / "patients"
    for name in ("p1/a.png", "p2/visit/b.png"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / name), np.full((20, 20), 200, np.uint8))
    write_12_bit_png(data / "p2" / "deep.png", np.full((20, 20), 4000, np.uint16))
    (data / "p1" / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    assert main([str(model_path), str(data), "--out", str(out), "--spacing", "0.5"]) == 1
    assert (out / "p1" / "a_mask.png").is_file() and (out / "p2" / "visit" / "b_mask.png").is_file()
    err = capsys.readouterr().err
    assert "notes.txt: unsupported file type" in err and "1 of 4 files" in err
    rows = {r["file"]: r for r in read_rows(out)}
    assert set(rows) == {"p1/a.png", "p2/deep.png", "p2/visit/b.png"}
    assert rows["p2/visit/b.png"]["mask"] == "p2/visit/b_mask.png"
    assert int(rows["p2/deep.png"]["rib_area_px"]) == 400  # 4000 of 4095 is bright, not black
    assert float(rows["p1/a.png"]["rib_area_mm2"]) == pytest.approx(400 * 0.25)


def test_unreadable_and_unsupported_inputs_are_named(model_path, tmp_path, capsys):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"x" * 300)
    assert main([str(model_path), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {bad}: not a readable DICOM file")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert main([str(model_path), str(other)]) == 2
    assert f"{other}: unsupported file type" in capsys.readouterr().err


def test_postprocess_removes_small_components_and_keeps_the_largest():
    mask = np.zeros((10, 12), np.uint8)
    mask[0:2, 0:2] = 1  # 4 px
    mask[4:7, 0:3] = 1  # 9 px
    mask[0:4, 6:11] = 1  # 20 px
    mask[9, 11] = 1  # 1 px
    assert postprocess(mask).sum() == 34
    assert postprocess(mask, min_size=5).sum() == 29
    largest = postprocess(mask, keep_largest=1)
    assert largest.sum() == 20 and largest[0:4, 6:11].all()
    assert postprocess(mask, min_size=5, keep_largest=5).sum() == 29
    assert not PostProcess().active and PostProcess(min_size=3).active
    record = frame_record(postprocess(mask, min_size=5), np.full(mask.shape, 0.75), (0.1, 0.2))
    assert record["components"] == 2 and record["rib_area_px"] == 29
    assert record["rib_area_mm2"] == pytest.approx(29 * 0.02) and record["mean_probability"] == 0.75


def test_cli_post_processing(model_path, tmp_path):
    frame = np.zeros((32, 32), np.uint8)
    frame[2:4, 2:4] = 255
    frame[10:20, 10:20] = 255
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "f.png"), "--out", str(out), "--min-size", "5"]) == 0
    row, = read_rows(out)
    assert (int(row["components"]), int(row["rib_area_px"])) == (1, 100)


def test_video_is_streamed_in_chunks_with_progress_and_times(model_path, tmp_path, monkeypatch, capsys):
    import lungseg.commands.predict
    import lungseg.predict

    write_video(tmp_path / "cine.avi", 5)
    seen = []
    real = lungseg.predict.predict_probabilities

    def recording(model, frames, *args):
        seen.append(len(frames))
        return real(model, frames, *args)

    monkeypatch.setattr(lungseg.predict, "predict_probabilities", recording)
    monkeypatch.setattr(lungseg.commands.predict, "VIDEO_CHUNK_FRAMES", 2)
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "cine.avi"), "--out", str(out), "--threshold", "0.4"]) == 0
    assert seen == [2, 2, 1]  # never more than a chunk of frames decoded at once
    assert "cine.avi frames" in capsys.readouterr().err  # the one long file shows its progress
    rows = read_rows(out)
    assert [r["time_s"] for r in rows] == ["0", "0.1", "0.2", "0.3", "0.4"]  # 10 frames/s
    assert {(r["model"], r["threshold"], r["spacing_source"]) for r in rows} == {(str(model_path), "0.4", "")}
    capture = cv2.VideoCapture(str(out / "cine_overlay.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()


def test_a_video_that_ends_early_keeps_its_decoded_frames(model_path, tmp_path, monkeypatch, capsys):
    import lungseg.data.sources as sources

    real = sources.read_video

    def claims_seven(path):  # a container stating more frames than it holds
        source = real(path)
        source.frames.count = 7
        return source

    monkeypatch.setattr(sources, "read_video", claims_seven)
    write_video(tmp_path / "cine.avi", 5)
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "cine.avi"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "only 5 of its 7 frames could be decoded" in err and "its first 5 frames were segmented" in err
    assert len(read_rows(out)) == 5 and len(list(out.glob("cine_*_mask.png"))) == 5
    assert (out / "cine_overlay.avi").is_file()


def test_a_dicom_files_own_spacing_wins_over_the_option_and_says_so_once(model_path, tmp_path, capsys):
    frames = np.zeros((2, 16, 24), np.uint16)
    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "scan.dcm", frames, spacing=(0.2, 0.3))
    cv2.imwrite(str(tmp_path / "in" / "plain.png"), np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    assert main([str(model_path), str(tmp_path / "in"), "--out", str(out), "--spacing", "0.5"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {tmp_path / 'in' / 'scan.dcm'}: its own pixel spacing 0.2 x 0.3 mm is used, "
                     "not --spacing 0.5 x 0.5"]
    rows = read_rows(out)
    spacing = {(r["file"], r["frame"]): (r["row_spacing_mm"], r["column_spacing_mm"], r["spacing_source"])
               for r in rows}
    assert spacing == {("scan.dcm", "1"): ("0.2", "0.3", "file"), ("scan.dcm", "2"): ("0.2", "0.3", "file"),
                       ("plain.png", "1"): ("0.5", "0.5", "option")}
    assert {r["time_s"] for r in rows} == {""}  # only video frames have a time


def test_deep_frames_of_unstated_range_are_said_in_one_line(model_path, tmp_path, capsys):
    data = tmp_path / "deep"
    data.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(data / f"{name}.png"), np.full((20, 20), 1000, np.uint16))
    assert main([str(model_path), str(data), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "2 16-bit frame(s) state no range" in err and "fit 10 bits (up to 1000)" in err
    assert main([str(model_path), str(data), "--out", str(tmp_path / "out"), "--max-value", "4095"]) == 0
    assert "warning" not in capsys.readouterr().err
