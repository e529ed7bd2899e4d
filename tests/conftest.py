"""Shared test set-up: quiet TensorFlow, tiny generated data sets and tiny trained runs.

The tiny runs (32 x 32 frames, 2 folds, 1-2 epochs) are trained once per session and shared
by the training, evaluation and reliability tests.
"""

import importlib.util
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--lus-frames", "16", "--folds", "2", "--batch-size", "4",
        "--lr", "1e-3", "--seed", "1"]


def load_script(name):
    """A top-level script (train_vunet.py, ...) as a module, to call its main in-process."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, *argv):
    """Run a script's main like its command line does; return the exit code."""
    from lungseg.cli import run_main

    try:
        return run_main(load_script(name).main, [str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


@pytest.fixture(scope="session")
def tiny_lus(tmp_path_factory):
    from lungseg.data import write_lus_dataset

    return write_lus_dataset(tmp_path_factory.mktemp("lus") / "lus", n=12, seed=3)


@pytest.fixture(scope="session")
def tiny_salient(tmp_path_factory):
    from lungseg.data import write_salient_dataset

    return write_salient_dataset(tmp_path_factory.mktemp("salient") / "salient", n=10, seed=4)


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory):
    """A VGG16 no-top weights file made offline, so stage-1 encoder weights are known."""
    import keras

    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    return path


@pytest.fixture(scope="session")
def vunet_run(tmp_path_factory, tiny_lus, vgg_weights):
    """A tiny V-Unet run trained fold 2 first, then fold 1 (so fold gathering is exercised)."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["--data", tiny_lus, "--out", out, "--name", "v", "--epochs", "2", "1",
            "--encoder-weights", vgg_weights, *TINY]
    codes = [run_script("train_vunet", *argv, "--fold", "2")]
    partial = (out / "v" / "summary.json").read_text()
    codes.append(run_script("train_vunet", *argv, "--fold", "1"))
    return {"dir": out / "v", "argv": argv, "codes": codes, "partial_summary": partial}


@pytest.fixture(scope="session")
def xunet_run(tmp_path_factory, tiny_lus, tiny_salient):
    out = tmp_path_factory.mktemp("runs")
    argv = ["--data", tiny_lus, "--salient", tiny_salient, "--out", out, "--name", "x",
            "--epochs", "1", "--freeze", "bottleneck", *TINY]
    code = run_script("train_xunet", *argv)
    return {"dir": out / "x", "argv": argv, "code": code}


def snapshot(folder):
    """{relative path: (size, mtime, inode)} of every file below ``folder``, to prove nothing
    changed: a file rewritten in place changes its mtime, one replaced by a rename its inode."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def copy_of():
    """Copy a folder; with ``link`` as hard links, which use no disk: for folders that only
    lungseg writes to (it writes a temporary file and renames it, so the original cannot
    change), never for ones a test edits in place."""

    def copy(src, dst, link=False):
        shutil.copytree(src, dst, copy_function=os.link if link else shutil.copy2)
        return Path(dst)

    return copy
