"""Inference API and the ``lungseg-predict`` command on tiny models and frames."""

import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

from conftest import narrow_xunet
from lungseg.errors import ConfigError, DataError, LungsegError
from lungseg.commands.predict import default_output_folder, main
from lungseg.predict import (
    load_model,
    model_batch,
    predict_probabilities,
    segment,
    segment_batch,
)

FRAME_SHAPES = ((100, 40), (60, 90))


@pytest.fixture(scope="module")
def models(module_tmp):
    """Narrow X-Unets (conftest.narrow_xunet) saved to .keras: gray input and 3-channel input."""
    paths = {}
    for channels in (1, 3):
        path = module_tmp / f"xunet_{channels}.keras"
        narrow_xunet((32, 32, channels)).save(path)
        paths[channels] = path
    return paths


@pytest.fixture(scope="module")
def gray_model(models):
    return load_model(models[1])


def threshold_model(channels=1):
    """Pixel is rib when its value exceeds 127.5: sigmoid(mean of channels - 127.5)."""
    inputs = keras.Input((32, 32, channels))
    outputs = keras.layers.Conv2D(
        1, 1, activation="sigmoid",
        kernel_initializer=keras.initializers.Constant(1.0 / channels),
        bias_initializer=keras.initializers.Constant(-127.5),
    )(inputs)
    return keras.Model(inputs, outputs)


def write_frames(folder, shapes=FRAME_SHAPES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index, shape in enumerate(shapes):
        path = folder / f"frame_{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(path)
    return paths


# --- Python API --------------------------------------------------------------------------


def test_segment_keeps_each_frame_size(gray_model):
    for shape in FRAME_SHAPES:
        frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        mask = segment(gray_model, frame)
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}


def test_segment_accepts_colour_and_16_bit_frames(models, gray_model):
    colour_model = load_model(models[3])
    colour = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert segment(colour_model, colour).shape == (50, 70)
    assert segment(gray_model, colour).shape == (50, 70)
    deep = np.random.default_rng(0).integers(0, 65536, (40, 30), dtype=np.uint16)
    assert segment(gray_model, deep).shape == (40, 30)


def test_resizing_and_threshold_place_the_mask_exactly():
    # 96 x 64 frame, 32 x 32 model: a block aligned to the 3 x 2 scale survives the round trip,
    # so a swapped height/width or a half-pixel offset would show. The probability is resized
    # bilinearly and then thresholded: each corner pixel gets 2/3 * 3/4 = 0.5, not above 0.5.
    frame = np.zeros((96, 64), np.uint8)
    frame[30:60, 20:40] = 200
    expected = (frame > 127).astype(np.uint8)
    for row, column in ((30, 20), (30, 39), (59, 20), (59, 39)):
        expected[row, column] = 0
    for channels in (1, 3):
        model = threshold_model(channels)
        np.testing.assert_array_equal(segment(model, frame), expected)

    dim = np.where(frame, 130, 0).astype(np.uint8)  # probability sigmoid(2.5) = 0.924
    # the block's edge pixels weigh the inside 2/3 (rows) or 3/4 (columns): under 0.9
    inside = np.zeros_like(expected)
    inside[31:59, 21:39] = 1
    np.testing.assert_array_equal(segment(threshold_model(), dim, threshold=0.9), inside)
    assert segment(threshold_model(), dim, threshold=0.95).sum() == 0


def test_segment_batch_matches_segment_and_model(gray_model):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in FRAME_SHAPES * 3]
    masks = segment_batch(gray_model, frames, batch_size=4)
    assert [mask.shape for mask in masks] == [frame.shape for frame in frames]
    np.testing.assert_array_equal(masks[1], segment(gray_model, frames[1]))

    probabilities = predict_probabilities(gray_model, frames, batch_size=4)
    assert probabilities.shape == (6, 32, 32) and probabilities.dtype == np.float32
    bare = gray_model.predict(model_batch(frames, 32, 32, 1), verbose=0)[..., 0]
    np.testing.assert_allclose(probabilities, bare, atol=1e-5)
    assert predict_probabilities(gray_model, []).shape == (0, 32, 32)


def test_predict_probabilities_in_chunks(monkeypatch):
    import lungseg.predict

    monkeypatch.setattr(lungseg.predict, "PREDICT_CHUNK_FRAMES", 4)
    model = threshold_model()
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (64, 48), dtype=np.uint8) for _ in range(7)]
    bare = model.predict(model_batch(frames, 32, 32, 1), verbose=0)[..., 0]
    for batch_size in (1, 2, 3, 10):
        probabilities = predict_probabilities(model, frames, batch_size=batch_size)
        np.testing.assert_allclose(probabilities, bare, atol=1e-6)
    frames[5] = frames[5].astype(np.float32)
    with pytest.raises(DataError, match="frame 5: unsupported pixel type float32"):
        predict_probabilities(model, frames, batch_size=2)


def test_model_batch_copies_gray_to_three_channels():
    frame = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)
    batch = model_batch([frame], 32, 32, 3)
    assert batch.shape == (1, 32, 32, 3) and batch.dtype == np.uint8  # model rescales in-graph
    assert (batch[..., 0] == batch[..., 2]).all()


def test_bad_options_raise_config_error(gray_model):
    frame = np.zeros((8, 8), np.uint8)
    with pytest.raises(ConfigError, match="threshold"):
        segment(gray_model, frame, threshold=1.5)
    with pytest.raises(ConfigError, match="interpolation"):
        segment(gray_model, frame, interpolation="lanczos")
    with pytest.raises(ConfigError, match="batch size"):
        segment_batch(gray_model, [frame], batch_size=0)


def test_load_model_refuses_a_lambda_layer(tmp_path):
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Lambda(lambda t: t * 0.5)(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(LungsegError, match=r"lambda\.keras: refused.*Lambda layer"):
        load_model(path)


def test_load_model_rejects_a_model_that_is_not_a_segmenter(tmp_path):
    inputs = keras.Input((10,))
    path = tmp_path / "dense.keras"
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)
    with pytest.raises(LungsegError, match="dense.keras: expected one image input"):
        load_model(path)


def test_default_output_folder(tmp_path):
    assert default_output_folder(tmp_path / "scans" / "a.tif") == tmp_path / "scans" / "a_masks"
    assert default_output_folder(tmp_path / "frames") == tmp_path / "frames_masks"


# --- command line ------------------------------------------------------------------------


def check_outputs(out, frame_paths):
    for path in frame_paths:
        frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(out / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / f"{path.stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == frame.shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == (*frame.shape, 3)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_cli_single_frames_of_two_sizes(models, tmp_path, capsys):
    frames = write_frames(tmp_path / "in")
    for path in frames:  # each run's --out holds its own results whole (docs/guarantees.md)
        out = tmp_path / f"out_{path.stem}"
        assert main([str(models[1]), str(path), "--out", str(out)]) == 0
        check_outputs(out, [path])
        assert f"to {out}" in capsys.readouterr().out


def test_cli_folder_with_default_output_and_colour_model(models, tmp_path, capsys):
    frames = write_frames(tmp_path / "frames")
    assert main([str(models[3]), str(tmp_path / "frames"), "--batch-size", "1"]) == 0
    check_outputs(tmp_path / "frames_masks", frames)
    assert "wrote 2 mask(s)" in capsys.readouterr().out


def test_cli_skips_an_unreadable_frame_and_exits_1(models, tmp_path, capsys):
    frames = write_frames(tmp_path / "frames")
    (tmp_path / "frames" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main([str(models[1]), str(tmp_path / "frames"), "--out", str(out)]) == 1
    check_outputs(out, frames)
    assert not (out / "broken_mask.png").exists()
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 3 files" in err


def test_cli_unreadable_single_frame_or_whole_folder_exits_2(models, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    broken = folder / "broken.tif"
    broken.write_bytes(b"\x00" * 10)
    assert f"{broken}: not a readable image" in cli_error([str(models[1]), str(broken)], capsys)
    assert main([str(models[1]), str(folder)]) == 2
    err = capsys.readouterr().err
    assert "broken.tif" in err and "none of the 1 files" in err


def cli_error(argv, capsys):
    """Run the CLI expecting failure; return its one-line message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli_errors_name_the_file(models, tmp_path, capsys):
    frame = write_frames(tmp_path / "in", FRAME_SHAPES[:1])[0]
    missing = tmp_path / "missing.keras"
    assert str(missing) in cli_error([str(missing), str(frame)], capsys)

    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    message = cli_error([str(not_a_model), str(frame)], capsys)
    assert str(not_a_model) in message and "not a loadable Keras model" in message

    message = cli_error([str(models[1]), str(tmp_path / "nope.png")], capsys)
    assert "nope.png: input does not exist" in message

    (tmp_path / "empty").mkdir()
    assert "holds no frames" in cli_error([str(models[1]), str(tmp_path / "empty")], capsys)

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    message = cli_error([str(models[1]), str(frame), "--out", str(blocker / "masks")], capsys)
    assert "cannot create the output folder" in message and str(blocker) in message

    assert "threshold" in cli_error([str(models[1]), str(frame), "--threshold", "2"], capsys)


def test_cli_refuses_a_lambda_model(tmp_path, capsys):
    inputs = keras.Input((32, 32, 1))
    outputs = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    frame = write_frames(tmp_path / "in", FRAME_SHAPES[:1])[0]
    message = cli_error([str(path), str(frame)], capsys)
    assert "lambda.keras" in message and "safe mode" in message


def test_cli_debug_shows_the_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "missing.keras"), str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_option_errors_come_before_any_work(tmp_path, capsys):
    """lungseg's own checks of the options run before the model is even looked for."""
    frame = write_frames(tmp_path / "in", FRAME_SHAPES[:1])[0]
    missing_model = tmp_path / "missing.keras"
    out = tmp_path / "out"
    for option, words in (
        (["--batch-size", "0"], "batch size must be at least 1, got 0"),
        (["--threshold", "-0.1"], "threshold must be between 0 and 1, got -0.1"),
    ):
        message = cli_error([str(missing_model), str(frame), "--out", str(out), *option], capsys)
        assert words in message
    assert not out.exists()


def test_python_dash_m_reports_one_line(tmp_path):
    frame = write_frames(tmp_path, FRAME_SHAPES[:1])[0]
    result = subprocess.run(
        [sys.executable, "-m", "lungseg.commands.predict", str(tmp_path / "m.keras"), str(frame)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'm.keras'}: model file does not exist\n"


def test_cli_takes_the_interpolation_of_the_training_run(models, tmp_path, capsys):
    import shutil

    from lungseg.config import make_config
    from lungseg.files import write_text

    run = tmp_path / "run"
    (run / "fold_1").mkdir(parents=True)
    model_path = run / "fold_1" / "model.keras"
    shutil.copy(models[1], model_path)
    write_text(run / "config.json", make_config("xunet", "run", interpolation="area").to_json())
    frame = write_frames(tmp_path / "in", FRAME_SHAPES[:1])[0]
    assert main([str(model_path), str(frame)]) == 0
    assert "resized with area" in capsys.readouterr().out
    assert main([str(model_path), str(frame), "--interpolation", "bilinear"]) == 0
    assert "resized with bilinear" in capsys.readouterr().out
    assert main([str(models[1]), str(frame)]) == 0  # no run folder: the paper's nearest
    assert "resized with nearest" in capsys.readouterr().out


def test_crop_predicts_on_the_sector_and_maps_the_mask_back_in_place(tmp_path, capsys):
    import shutil

    from test_data_crop import screen_capture

    from lungseg.config import make_config
    from lungseg.data.crop import find_sector
    from lungseg.files import write_text

    frame, _ = screen_capture()  # 96 x 128: a sector with a label, scale dots and a line
    model = threshold_model()  # rib where the frame is brighter than 127.5
    whole = segment(model, frame)
    box = find_sector(frame)
    top, left, bottom, right = box
    outside = np.ones(frame.shape, bool)
    outside[top:bottom, left:right] = False
    assert whole[outside].sum() > 20  # stretched: the label and dots are segmented too
    cropped = segment(model, frame, crop="auto")
    assert cropped.shape == frame.shape and not cropped[outside].any()
    # inside the box the same frame at a finer scale: the mask agrees with the bright pixels
    bright = frame[top:bottom, left:right] > 127
    inside = cropped[top:bottom, left:right].astype(bool)
    assert 2 * np.sum(bright & inside) / (bright.sum() + inside.sum()) > 0.4
    padded = segment(model, frame, crop="auto", keep_aspect=True)
    assert padded.shape == frame.shape and not padded[outside].any()

    # lungseg-predict places frames as the model's training run did (config.json)
    run = tmp_path / "run"
    (run / "fold_1").mkdir(parents=True)
    model.save(run / "fold_1" / "model.keras")
    write_text(run / "config.json", make_config("xunet", "run", "sound").to_json())
    from lungseg.inference import load_predictor

    predictor = load_predictor(run / "fold_1" / "model.keras")
    assert (predictor.crop, predictor.keep_aspect) == ("auto", False)
    np.testing.assert_array_equal(predictor.segment([frame])[0], cropped)
    cv2.imwrite(str(tmp_path / "capture.png"), frame)
    assert main([str(run / "fold_1" / "model.keras"), str(tmp_path / "capture.png"),
                 "--out", str(tmp_path / "out")]) == 0
    assert "frames cropped to the imaging sector, resized with nearest" in capsys.readouterr().out
    written = cv2.imread(str(tmp_path / "out" / "capture_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written // 255, cropped)
    shutil.rmtree(tmp_path / "out")
    assert main([str(run / "fold_1" / "model.keras"), str(tmp_path / "capture.png"),
                 "--out", str(tmp_path / "out"), "--crop", "none"]) == 0
    written = cv2.imread(str(tmp_path / "out" / "capture_mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written // 255, whole)
