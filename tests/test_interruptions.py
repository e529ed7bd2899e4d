"""Interruptions and determinism, through train_xunet.py in fresh processes: SIGKILL and Ctrl-C
in the middle of a stage, then the same command resumes; two runs of one command agree."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT, TINY, run_script
from lungseg.files import read_json

pytestmark = pytest.mark.long  # a module of half a minute or more (conftest)


# The runs fine-tune a tiny stand-in for a pre-trained model (conftest.tiny_pretrained: a
# convolution, a pooling and a transposed convolution): traced in a fraction of a second, and
# what the tests check is the processes, exit codes, files and determinism, not the model.


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


# Two replicas, logical CPUs standing in for GPUs; then train_xunet.py's main, as its command line calls it.
MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import lungseg.training as training
training.distribution_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from lungseg.commands.train_xunet import main
sys.exit(main())
"""


def test_killed_mirrored_run_resumes_from_its_saved_epoch_and_finishes(tiny_pretrained, tiny_lus, tmp_path):
    """SIGKILL at any moment after epoch 1 of a run over two replicas; the same command again
    resumes after the epoch the state holds, and finishes with every epoch once."""
    epochs = 4  # half a second or more each over two replicas: the kill lands mid-stage
    argv = fine_tuning(tiny_lus, tiny_pretrained, tmp_path, "k", epochs)
    command = [sys.executable, "-c", MIRRORED, *map(str, argv)]
    # TMPDIR: the killed process cannot remove the files autograph writes there.
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    state = tmp_path / "k" / "fold_1" / "state" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    saved_epoch(state, 1, process)
    assert process.poll() is None, "the run ended before it could be killed: give it more epochs"
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = read_json(state)["epoch"]
    assert 1 <= saved < epochs
    assert not (tmp_path / "k" / "fold_1" / "metrics.json").exists()

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming after epoch {saved} of {epochs}" in again.stdout
    assert read_json(tmp_path / "k" / "summary.json")["environment"]["strategy"] == "MirroredStrategy"
    assert epochs_in_history(tmp_path / "k") == [str(epoch) for epoch in range(epochs)]
    assert not list(tmp_path.rglob(".tmp-*")) and not state.parent.exists()
    keras.models.load_model(tmp_path / "k" / "fold_1" / "model.keras")


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tiny_pretrained, tiny_lus, tmp_path, capsys):
    epochs = 10  # a tenth of a second or more each: Ctrl-C lands in the middle of the stage
    argv = fine_tuning(tiny_lus, tiny_pretrained, tmp_path, "c", epochs)
    # -X faulthandler: a run that does not stop can be made to show where it is (SIGABRT).
    command = [sys.executable, "-X", "faulthandler", str(ROOT / "train_xunet.py"), *map(str, argv)]
    state = tmp_path / "c" / "fold_1" / "state" / "state.json"
    # Ctrl-C in a terminal reaches a process whose SIGINT is the default. A process gets the
    # default for a signal its parent handles, but keeps one its parent ignores, as pytest's
    # does when started in the background (nohup, CI): so a handler while it starts.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, ignored)
    saved_epoch(state, 1, process)
    assert process.poll() is None, "the run ended before Ctrl-C: give it more epochs"
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


def test_same_seed_same_splits_augmentation_weights_and_dice(tiny_pretrained, tiny_lus, tmp_path):
    """Two runs of one command on this machine agree to the bit (in fresh processes, run at
    the same time: op determinism is process-wide and must not leak into other tests)."""
    from lungseg.data import PaperAugmentation

    processes = {}
    for name in ("a", "b"):
        # Two epochs: the second one reshuffled and augmented anew.
        argv = fine_tuning(tiny_lus, tiny_pretrained, tmp_path, name, 2, "--deterministic")
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
    start = keras.models.load_model(tiny_pretrained).get_weights()
    assert len(weights[0]) == len(weights[1]) == len(start)
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
    assert not all(np.array_equal(w, s) for w, s in zip(weights[0], start))  # it did train
    draws = [PaperAugmentation().random_parameters(8, 32, 32, seed=3) for _ in range(2)]
    for key in draws[0]:
        np.testing.assert_array_equal(np.asarray(draws[0][key]), np.asarray(draws[1][key]))
