"""Training on several machines: TF_CONFIG, MultiWorkerMirroredStrategy, the chief's run folder.

Two CPU processes on 127.0.0.1 stand in for two machines. They train X-Unet's fine-tuning
folds from a tiny stand-in for a pre-trained model, so that a run takes seconds.
"""

import json
import os
import socket
import subprocess
import sys
import pytest

from conftest import ROOT, TINY
from lungseg.errors import ConfigError
from lungseg.files import read_json
from lungseg.distribute import Cluster, cluster_from_tf_config

pytestmark = pytest.mark.long  # a module of half a minute or more (conftest)


# A worker: the training command; "kill" dies right after the first epoch's state is written;
# every step's batch on this worker is counted and printed at the end (STEP_FRAMES [...]).
WORKER = """
import atexit, os, sys
import keras
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
import lungseg.training as training

frames = []
train_step = TensorFlowTrainer.train_step
def counted_step(self, data):
    count = tf.py_function(lambda n: frames.append(int(n)) or 0, [tf.shape(data[0])[0]], tf.int64)
    with tf.control_dependencies([count]):
        return train_step(self, data)
TensorFlowTrainer.train_step = counted_step
atexit.register(lambda: print("STEP_FRAMES", frames, flush=True))
if sys.argv[1] == "kill":
    save = training.EpochCheckpoint.on_epoch_end
    def save_then_die(self, epoch, logs=None):
        save(self, epoch, logs)
        print("STEP_FRAMES", frames, flush=True)
        os._exit(9)
    training.EpochCheckpoint.on_epoch_end = save_then_die
from lungseg.commands.train_xunet import main
sys.argv[1:] = sys.argv[2:]  # as the command line gives them
sys.exit(main())
"""


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(argv, tmp_path, mode="go", timeout=240, worker_argv=None):
    """Start two workers on 127.0.0.1 with ``argv`` (worker 1: ``worker_argv`` if given); wait
    for both (killing both on timeout); return [(exit code, stdout + stderr)] of worker 0 (the
    chief) and worker 1. Each has its own TMPDIR, ``tmp_path/tmp<index>``."""
    ports = free_ports(2)
    processes = []
    for index, args in enumerate([argv, worker_argv or argv]):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": tf_config(ports, index),
               "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(scratch), "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1",
               "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, *map(str, args)], env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    results = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, out))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        outputs = [process.communicate()[0] for process in processes]
        pytest.fail("the workers did not finish in time:\n" + "\n----\n".join(o[-3000:] for o in outputs))
    return results


def step_frames(output):
    line = [line for line in output.splitlines() if line.startswith("STEP_FRAMES")][-1]
    return json.loads(line.split(" ", 1)[1])


def epoch_lines(output):
    """The per-epoch log lines, without their wall time."""
    return [line.rsplit("  (", 1)[0] for line in output.splitlines() if "] epoch " in line]


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"TF_CONFIG": ""}, None),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}, None),
    ({"TF_CONFIG": tf_config([1, 2], 0)}, Cluster(2, "worker", 0)),
    ({"TF_CONFIG": tf_config([1, 2], 1)}, Cluster(2, "worker", 1)),
    ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                               "task": {"type": "worker", "index": 0}})}, Cluster(3, "worker", 0, has_chief=True)),
])
def test_tf_config_names_the_cluster(environ, expected):
    assert cluster_from_tf_config(environ) == expected


def test_the_chief_is_the_chief_task_else_worker_0():
    assert Cluster(2, "worker", 0).is_chief and not Cluster(2, "worker", 1).is_chief
    assert Cluster(3, "chief", 0, has_chief=True).is_chief
    assert not Cluster(3, "worker", 0, has_chief=True).is_chief


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps({"cluster": {"worker": ["a:1", "b:1"], "ps": ["c:1"]}, "task": {"type": "ps", "index": 0}}),
    json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}),
])
def test_a_tf_config_that_names_no_usable_task_is_refused(text):
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster_from_tf_config({"TF_CONFIG": text})


def test_a_lost_worker_is_one_line_that_says_how_to_go_on():
    import tensorflow as tf

    from lungseg.errors import LungsegError
    from lungseg.distribute import lost_worker_as_error

    text = ("{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:0/device:CPU:0}} "
            "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks "
            "are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have "
            "crashed. Check the task logs for an earlier error.")
    with pytest.raises(LungsegError) as caught, lost_worker_as_error():
        raise tf.errors.UnavailableError(None, None, text)
    assert str(caught.value) == (
        "a worker of the cluster stopped (/job:worker/replica:0/task:1 stopped sending heartbeats); "
        "run the same command on every machine again to resume after the last finished epoch")


def test_two_workers_train_one_run_folder_written_by_the_chief_and_resume_together(
        tiny_lus, tiny_pretrained, tmp_path):
    """Two workers killed after the first epoch, restarted where they disagree (refused), then
    restarted alike: they resume together and finish the run, which only the chief wrote."""
    import keras

    out = tmp_path / "out"
    argv = ["--data", tiny_lus, "--pretrained", tiny_pretrained, "--out", out, "--name", "m",
            "--epochs", "2", *TINY]
    killed = run_cluster(argv, tmp_path, mode="kill")
    assert [code for code, _ in killed] == [9, 9], killed[0][1][-3000:] + killed[1][1][-3000:]
    run = out / "m"
    assert read_json(run / "fold_1" / "state" / "state.json")["epoch"] == 1
    assert len(list((tmp_path / "tmp1").glob("lungseg-*"))) == 1  # a killed worker leaves its scratch

    # Restarted where the worker cannot see the chief's run folder (another --out stands for
    # another machine's disk): the chief would resume after epoch 1, the worker start afresh.
    # Both say so and stop before training, leaving the run as it was.
    elsewhere = [str(tmp_path / "elsewhere") if a == out else a for a in argv]
    apart = run_cluster(argv, tmp_path, worker_argv=elsewhere)
    assert [code for code, _ in apart] == [2, 2], apart[0][1][-3000:] + apart[1][1][-3000:]
    for _, output in apart:
        assert "the workers do not start fold_1 alike: resume epoch differs " \
               "(resume epochs 0, 1)" in output and "filesystem all workers share" in output
    assert read_json(run / "fold_1" / "state" / "state.json")["epoch"] == 1

    (chief_code, chief), (worker_code, worker) = run_cluster(argv, tmp_path)
    assert chief_code == 0, chief[-3000:]
    assert worker_code == 0, worker[-3000:]
    for output in (chief, worker):
        assert "resuming after epoch 1 of 2" in output
    history = (run / "fold_1" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]
    assert not (run / "fold_1" / "state").exists()

    summary = read_json(run / "summary.json")
    assert summary["complete"] and set(summary["folds"]) == {"fold_1", "fold_2"}
    environment = summary["environment"]
    assert environment["strategy"] == "MultiWorkerMirroredStrategy"
    assert (environment["workers"], environment["replicas"]) == (2, 2)
    for fold in ("fold_1", "fold_2"):
        keras.models.load_model(run / fold / "model.keras")
    # Only the chief wrote here: its files and nothing else, its log alone.
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {"m/config.json", "m/splits.json", "m/frames.json", "m/summary.json", "m/train.log",
                     *(f"m/{fold}/{name}" for fold in ("fold_1", "fold_2")
                       for name in ("model.keras", "history.csv", "metrics.json"))}
    log = (run / "train.log").read_text()
    assert "2 workers (MultiWorkerMirroredStrategy), this one worker 0, the chief" in log
    assert "worker 1" not in log
    # The other worker wrote a scratch copy, gone now (the stale one went at the restart); the
    # chief made none.
    assert f"this worker writes a copy in {tmp_path / 'tmp1'}" in worker
    assert list(tmp_path.glob("tmp*/lungseg-*")) == []
    # Trained together: the same reduced losses and metrics every epoch (fold 1's second, then
    # fold 2's two), each on half of every global batch of 4: 8 training frames per fold, so
    # 2 steps of 2 frames per epoch.
    assert epoch_lines(chief) == epoch_lines(worker) and len(epoch_lines(chief)) == 3
    assert "epoch 2/2" in epoch_lines(chief)[0]
    # The logged loss is the true one, not twice it: minus the Dice of the same batches.
    for line in epoch_lines(chief):
        values = dict(zip(*[iter(line.split(": ", 1)[1].split())] * 2))
        assert float(values["val_loss"]) == pytest.approx(-float(values["val_dice_coef"]), abs=1e-3)
    assert step_frames(chief) == step_frames(worker) == [2] * 6
