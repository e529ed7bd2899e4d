"""Bad input, interruptions, determinism and safe loading, through the command lines.

Every bad-input case ends with either a documented accepted behaviour or exit code 2, one
clear message naming the file or option, no traceback, and existing folders unchanged.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import keras
import numpy as np
import pytest

from conftest import ROOT, TINY, narrow_xunet, run_script, snapshot
from lungseg.data import write_lus_dataset
from lungseg.data.io import write_image
from lungseg.files import read_json


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
def test_bad_training_data_is_named_and_leaves_runs_alone(case, good_lus, vunet_run, tmp_path, capsys, copy_of):
    data = copy_of(good_lus, tmp_path / "lus")
    named = corrupt(data, case)
    runs = copy_of(vunet_run["dir"].parent, tmp_path / "runs", link=True)
    before = snapshot(runs)
    code = run_script("train_xunet", "--data", data, "--out", runs, "--name", "v", "--epochs", "1", *TINY)
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
    from lungseg.predict import main as predict

    frame = tmp_path / "frame.png"
    write_image(frame, np.zeros((20, 10), np.uint8))
    check_failure(predict([str(tmp_path / "lambda.keras"), str(frame)]), capsys, "lambda.keras")
    check_failure(predict([str(tmp_path / "missing.keras"), str(frame)]), capsys, "missing.keras")
    assert snapshot(results) == before


def test_model_of_another_input_size_in_a_run_folder(vunet_run, tmp_path, capsys, copy_of):
    run = copy_of(vunet_run["dir"], tmp_path / "v", link=True)
    (run / "fold_1" / "model.keras").unlink()  # a hard link to the fixture's: replace, not overwrite
    narrow_xunet((48, 48, 1)).save(run / "fold_1" / "model.keras")
    results = tmp_path / "results"
    code = run_script("evaluate", run, "--out", results)
    check_failure(code, capsys, "fold_1/model.keras", "48x48", "32x32")
    assert not results.exists()


def test_small_frames_are_resized_up_and_masks_come_back_at_their_size(vunet_run, tmp_path):
    from lungseg.predict import main as predict

    frame = tmp_path / "small.png"
    write_image(frame, np.full((20, 12), 80, np.uint8))
    assert predict([str(vunet_run["dir"] / "fold_1" / "model.keras"), str(frame), "--out", str(tmp_path / "o")]) == 0
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


# --- interruptions ------------------------------------------------------------------------
# Runs that fine-tune a narrow X-Unet (conftest.narrow_xunet: X-Unet's layers with 1/32 of its
# filters): the resume state of a full-size one is 375 MB per epoch file, and the checks below
# are about the run's files and exit codes, not the model's size.


def fine_tuning(tiny_lus, pretrained, out, name, epochs, *options):
    return ["--data", tiny_lus, "--out", out, "--name", name, "--pretrained", pretrained,
            "--epochs", epochs, "--fold", "1", *options, *TINY]


def saved_epoch(state, at_least, process, deadline=240):
    """Wait until ``state`` holds epoch ``at_least`` or later while ``process`` still runs."""
    deadline += time.time()
    while time.time() < deadline and process.poll() is None:
        if state.exists() and read_json(state)["epoch"] >= at_least:
            return
        time.sleep(0.05)
    out = process.communicate()[0] if process.poll() is not None else "(still running)"
    pytest.fail(f"no epoch {at_least} saved in {state} while the run was running:\n{out[-3000:]}")


def epochs_in_history(run):
    return [line.split(",")[0] for line in (run / "fold_1" / "history.csv").read_text().splitlines()[1:]]


# Two replicas, logical CPUs standing in for GPUs; then train_xunet.py's main with the arguments.
MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import lungseg.training as training
training.distribution_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from conftest import run_script
sys.exit(run_script("train_xunet", *sys.argv[1:]))
"""


def test_killed_mirrored_run_resumes_from_its_saved_epoch_and_finishes(narrow_pretrained, tiny_lus, tmp_path):
    """SIGKILL at any moment after epoch 2 of a run over two replicas; the same command again
    resumes after the epoch the state holds, and finishes with every epoch once."""
    epochs = 8  # half a second each over two replicas: a kill lands in the middle of the stage
    argv = fine_tuning(tiny_lus, narrow_pretrained, tmp_path, "k", epochs)
    command = [sys.executable, "-c", MIRRORED, *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    state = tmp_path / "k" / "fold_1" / "state" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    saved_epoch(state, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = read_json(state)["epoch"]
    assert 2 <= saved < epochs
    assert not (tmp_path / "k" / "fold_1" / "metrics.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming after epoch {saved} of {epochs}" in again.stdout
    assert read_json(tmp_path / "k" / "summary.json")["environment"]["strategy"] == "MirroredStrategy"
    assert epochs_in_history(tmp_path / "k") == [str(epoch) for epoch in range(epochs)]
    assert not list(tmp_path.rglob(".tmp-*")) and not state.parent.exists()
    keras.models.load_model(tmp_path / "k" / "fold_1" / "model.keras")


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(narrow_pretrained, tiny_lus, tmp_path, capsys):
    epochs = 20  # under a tenth of a second each: Ctrl-C lands in the middle of the stage
    argv = fine_tuning(tiny_lus, narrow_pretrained, tmp_path, "c", epochs)
    # -X faulthandler: a run that does not stop can be made to show where it is (SIGABRT).
    command = [sys.executable, "-X", "faulthandler", str(ROOT / "train_xunet.py"), *map(str, argv)]
    state = tmp_path / "c" / "fold_1" / "state" / "state.json"
    # Ctrl-C in a terminal reaches a process whose SIGINT is the default; a test run started in
    # the background (nohup, CI) would pass SIGINT down ignored.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    saved_epoch(state, 1, process)
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        pytest.fail("still running 120 s after SIGINT:\n" + process.communicate()[1][-6000:])
    assert process.returncode == 130, err[-3000:]
    assert "Run the same command again to resume" in err
    assert "Traceback" not in err
    saved = read_json(state)["epoch"]
    assert 1 <= saved < epochs

    # What the message says works: the same command (here in this process, the default
    # strategy) resumes after the saved epoch and finishes.
    assert run_script("train_xunet", *argv) == 0
    assert f"resuming after epoch {saved} of {epochs}" in capsys.readouterr().out
    assert epochs_in_history(tmp_path / "c") == [str(epoch) for epoch in range(epochs)]
    assert not state.parent.exists()


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_splits_augmentation_weights_and_dice(narrow_pretrained, tiny_lus, tmp_path):
    """Two runs of one command on this machine agree to the bit (in fresh processes, run at
    the same time: op determinism is process-wide and must not leak into other tests)."""
    from lungseg.data import PaperAugmentation

    processes = {}
    for name in ("a", "b"):
        # Two epochs: the second one reshuffled and augmented anew.
        argv = fine_tuning(tiny_lus, narrow_pretrained, tmp_path, name, 2, "--deterministic")
        command = [sys.executable, str(ROOT / "train_xunet.py"), *map(str, argv)]
        processes[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for process in processes.values():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "splits.json").read_text() == (b / "splits.json").read_text()
    dice = [read_json(run / "summary.json")["folds"]["fold_1"]["dice"] for run in (a, b)]
    assert dice[0] == dice[1]

    def history(run):  # every value but the seconds each epoch took
        rows = [line.split(",") for line in (run / "fold_1" / "history.csv").read_text().splitlines()]
        return [[value for key, value in zip(rows[0], row) if key != "seconds"] for row in rows]

    assert history(a) == history(b) and len(history(a)) == 3
    weights = [keras.models.load_model(run / "fold_1" / "model.keras").get_weights() for run in (a, b)]
    start = keras.models.load_model(narrow_pretrained).get_weights()
    assert len(weights[0]) == len(weights[1]) == len(start)
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
    assert not all(np.array_equal(w, s) for w, s in zip(weights[0], start))  # it did train
    draws = [PaperAugmentation().random_parameters(8, 32, 32, seed=3) for _ in range(2)]
    for key in draws[0]:
        np.testing.assert_array_equal(np.asarray(draws[0][key]), np.asarray(draws[1][key]))
