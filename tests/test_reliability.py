"""Bad input and safe loading, through the command lines (interruptions and determinism:
test_interruptions.py).

Every bad-input case ends with either a documented accepted behaviour or exit code 2, one
clear message naming the file or option, no traceback, and existing folders unchanged.
"""

import shutil

import cv2
import keras
import numpy as np
import pytest

from conftest import TINY, narrow_xunet, run_script, snapshot
from lungseg.data import write_lus_dataset
from lungseg.data.io import write_image


@pytest.fixture(scope="module")
def good_lus(tmp_path_factory):
    return write_lus_dataset(tmp_path_factory.mktemp("good") / "lus", n=6, seed=5)


def corrupt(root, case):
    """Damage a copy of a good LUS data set as ``case`` says; return the file to be named."""
    image = root / "IMG" / "img_lung_pos2_5.tif"
    mask = root / "MASK" / "mask_lung_pos2_5.tif"
    if case == "missing mask":
        mask.unlink()
        return image.name
    if case == "extra mask":
        shutil.copy(mask, root / "MASK" / "mask_lung_pos9_5.tif")
        return "mask_lung_pos9_5.tif"
    if case == "size mismatch":
        write_image(mask, np.zeros((100, 128), np.uint8))
        return mask.name
    if case == "truncated image":
        image.write_bytes(image.read_bytes()[:300])
        return image.name
    if case == "zero-byte file":
        image.write_bytes(b"")
        return image.name
    if case == "text file named .tif":
        image.write_text("this is not an image\n")
        return image.name
    if case == "grey mask":
        write_image(mask, np.tile(np.linspace(0, 255, 128).astype(np.uint8), (960, 1)))
        return mask.name
    if case == "empty folder":
        for path in root.rglob("*.tif"):
            path.unlink()
        return str(root)
    raise ValueError(case)


TRAINING_CASES = {
    "missing mask": "no mask",
    "extra mask": "mask without an image",
    "size mismatch": "differs from its image",
    "truncated image": "not a readable image",
    "zero-byte file": "file is empty",
    "text file named .tif": "not a readable image",
    "grey mask": "mask is not binary",
    "empty folder": "no images",
}


def check_failure(code, capsys, *words):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # Ours: "error: ..."; argparse's usage errors: "usage: ...\nPROG: error: ...".
    assert err.startswith("error: ") or "error: " in err.splitlines()[-1], err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_bad_training_data_is_named_and_leaves_runs_alone(case, good_lus, narrow_run, tmp_path, capsys, copy_of):
    data = copy_of(good_lus, tmp_path / "lus")
    named = corrupt(data, case)
    runs = copy_of(narrow_run.parent, tmp_path / "runs", link=True)
    before = snapshot(runs)
    code = run_script("train_xunet", "--data", data, "--out", runs, "--name", "x", "--epochs", "1", *TINY)
    check_failure(code, capsys, named, TRAINING_CASES[case])
    assert snapshot(runs) == before


def test_missing_data_folder(tmp_path, capsys):
    code = run_script("train_vunet", "--data", tmp_path / "nowhere", "--out", tmp_path, *TINY)
    check_failure(code, capsys, "nowhere")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--epochs", "-2"], ["--epochs", "must be a positive whole number"]),
        (["--folds", "1"], ["--folds must be at least 2, got 1"]),
        (["--fold", "3"], ["--fold must be between 1 and --folds (2)"]),
        (["--freeze", "block9_conv1"], ["no layer with weights named block9_conv1"]),
        (["--image-size", "100"], ["--image-size", "multiples of 16"]),
    ],
)
def test_invalid_options(argv, words, tiny_lus, tmp_path, capsys):
    code = run_script("train_xunet", "--data", tiny_lus, "--out", tmp_path / "runs", *TINY, *argv)
    err = check_failure(code, capsys, *words) if code == 2 else pytest.fail(f"exit {code}")
    assert not (tmp_path / "runs" / "xunet_paper").exists(), err


def test_unwritable_output_folder(tiny_lus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code = run_script("train_vunet", "--data", tiny_lus, "--out", blocker / "runs", "--encoder-weights", "none", *TINY)
    check_failure(code, capsys, "file")
    assert blocker.read_text() == "a file where a folder should be"


def test_sixteen_bit_rgba_and_all_zero_masks_are_accepted(good_lus, tmp_path, capsys):
    """Documented: 16-bit frames are scaled to 8 bits, RGBA converted to gray, empty masks kept."""
    data = shutil.copytree(good_lus, tmp_path / "lus")
    frame = cv2.imread(str(data / "IMG" / "img_lung_pos2_5.tif"), cv2.IMREAD_UNCHANGED)
    write_image(data / "IMG" / "img_lung_pos2_5.tif", frame.astype(np.uint16) * 257)
    write_image(data / "IMG" / "img_lung_pos2_10.png", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGRA))
    (data / "IMG" / "img_lung_pos2_10.tif").unlink()
    write_image(data / "MASK" / "mask_lung_pos2_10.tif", np.zeros_like(frame))
    assert _data_cli("check", str(data)) == 0
    out = capsys.readouterr().out
    assert "6 pairs" in out and "all readable" in out


def test_jpeg_mask_noise_is_thresholded_with_a_warning(good_lus, tmp_path, caplog):
    data = shutil.copytree(good_lus, tmp_path / "lus")
    mask = cv2.imread(str(data / "MASK" / "mask_lung_pos2_5.tif"), 0)
    (data / "MASK" / "mask_lung_pos2_5.tif").unlink()
    cv2.imwrite(str(data / "MASK" / "mask_lung_pos2_5.jpg"), mask, [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert len(np.unique(cv2.imread(str(data / "MASK" / "mask_lung_pos2_5.jpg"), 0))) > 2
    with caplog.at_level("WARNING"):
        assert _data_cli("check", str(data)) == 0
    assert "mask_lung_pos2_5.jpg" in caplog.text and "thresholded at" in caplog.text


def _data_cli(*argv):
    from lungseg.data.__main__ import main

    return main([*argv, "--quiet"])


def test_data_generator_rejects_bad_counts_and_paths(tmp_path, capsys):
    from lungseg.data.__main__ import main

    check_failure(main(["lus", "--n", "0", "--out", str(tmp_path / "x"), "--quiet"]), capsys, "0")
    blocker = tmp_path / "file"
    blocker.write_text("")
    check_failure(main(["lus", "--n", "2", "--out", str(blocker / "x"), "--quiet"]), capsys, "file")


def test_not_a_model_and_lambda_models_are_refused_by_evaluate_and_predict(tmp_path, tiny_lus, capsys):
    fake = tmp_path / "fake.keras"
    fake.write_text("not a zip")
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.md").write_text("previous results\n")
    before = snapshot(results)
    check_failure(run_script("evaluate", fake, "--test", tiny_lus, "--out", results), capsys, "fake.keras")
    inputs = keras.Input((16, 16, 1))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 0 + 1)(inputs))
    lambda_model.save(tmp_path / "lambda.keras")
    err = check_failure(run_script("evaluate", tmp_path / "lambda.keras", "--test", tiny_lus, "--out", results), capsys, "lambda.keras")
    assert "Lambda" in err or "safe" in err
    from lungseg.commands.predict import main as predict

    frame = tmp_path / "frame.png"
    write_image(frame, np.zeros((20, 10), np.uint8))
    check_failure(predict([str(tmp_path / "lambda.keras"), str(frame)]), capsys, "lambda.keras")
    check_failure(predict([str(tmp_path / "missing.keras"), str(frame)]), capsys, "missing.keras")
    assert snapshot(results) == before


def test_model_of_another_input_size_in_a_run_folder(narrow_run, tmp_path, capsys, copy_of):
    run = copy_of(narrow_run, tmp_path / "x", link=True)
    (run / "fold_1" / "model.keras").unlink()  # a hard link to the fixture's: replace, not overwrite
    narrow_xunet((48, 48, 1)).save(run / "fold_1" / "model.keras")
    results = tmp_path / "results"
    code = run_script("evaluate", run, "--out", results)
    check_failure(code, capsys, "fold_1/model.keras", "48x48", "32x32")
    assert not results.exists()


def test_small_frames_are_resized_up_and_masks_come_back_at_their_size(narrow_run, tmp_path):
    from lungseg.commands.predict import main as predict

    frame = tmp_path / "small.png"
    write_image(frame, np.full((20, 12), 80, np.uint8))
    assert predict([str(narrow_run / "fold_1" / "model.keras"), str(frame), "--out", str(tmp_path / "o")]) == 0
    assert cv2.imread(str(tmp_path / "o" / "small_mask.png"), 0).shape == (20, 12)


def test_every_model_loader_keeps_safe_mode_on(tiny_lus, tmp_path, capsys):
    """A Lambda model that would otherwise serve as --pretrained is refused, and no lungseg
    module switches Keras' global safe mode off (predict and evaluate: tests above)."""
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    code = run_script("train_xunet", "--data", tiny_lus, "--out", tmp_path / "runs", "--name", "l",
                      "--pretrained", tmp_path / "lambda.keras", "--epochs", "1", "--fold", "1", *TINY)
    check_failure(code, capsys, "lambda.keras", "Lambda")
    assert not (tmp_path / "runs" / "l" / "fold_1" / "metrics.json").exists()

    import importlib
    import pkgutil

    import lungseg
    from keras.src.saving.serialization_lib import in_safe_mode

    for module in pkgutil.walk_packages(lungseg.__path__, "lungseg."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    assert in_safe_mode() is not False
