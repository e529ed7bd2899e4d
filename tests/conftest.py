"""Shared test set-up: quiet TensorFlow, tiny generated data sets and narrow trained runs.

The suite's one full-size training, a tiny V-Unet run (its model files take 100 MB each), is
trained and read in one module, test_tiny_runs.py, marked ``full_size``: it is collected
first, so that ``make test`` (two pytest-xdist workers, each taking whole modules: ``--dist
loadfile``) starts it first, and the other worker takes the modules marked ``long``, then the
rest, meanwhile. Checks that do not depend on the model's size use narrow models
(``narrow_xunet``; trainings through the command lines inside ``narrow_models``), whose files
take kilobytes. Trainings in the test processes run eagerly (``eager_trainings``); those a test
starts in a subprocess run traced, as users run them.
"""

import contextlib
import copy
import functools
import importlib.util
import os
import random
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


def pytest_collection_modifyitems(items):
    """The full-size module first, then the modules marked ``long``, then the others: with
    ``--dist loadfile --no-loadscope-reorder`` (the Makefile) pytest-xdist hands out whole
    modules in collection order, so the longest start at once and the short ones fill the end,
    and the two workers finish together."""
    items.sort(key=lambda item: (item.get_closest_marker("full_size") is None,
                                 item.get_closest_marker("long") is None))  # stable


@pytest.fixture
def no_download(monkeypatch):
    """Keras cannot download anything (as offline): ``get_file`` raises what it raises on a
    failed fetch. VGG16 calls it through ``keras.src.utils.file_utils`` (``keras.utils.get_file``
    is the same function), so it is replaced there."""
    from keras.src.utils import file_utils

    def get_file(fname=None, origin=None, **options):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure "
                        "in name resolution")

    monkeypatch.setattr(file_utils, "get_file", get_file)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for the files a module's tests share, removed when the module is done (a
    ``tmp_path_factory`` folder would stay to the end of the session); kept if a test failed."""
    failed = request.session.testsfailed
    folder = tmp_path_factory.mktemp(request.module.__name__)
    yield folder
    if request.session.testsfailed == failed:
        shutil.rmtree(folder, ignore_errors=True)


# --- data, weights and runs -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_lus(tmp_path_factory):
    from lungseg.data import write_lus_dataset

    return write_lus_dataset(tmp_path_factory.mktemp("lus") / "lus", n=12, seed=3)


@pytest.fixture(scope="session")
def tiny_salient(tmp_path_factory):
    from lungseg.data import write_salient_dataset

    return write_salient_dataset(tmp_path_factory.mktemp("salient") / "salient", n=10, seed=4)


def narrow_xunet(input_shape=(32, 32, 1), divide=32, seed=0):
    """X-Unet with every layer's filters divided by ``divide``: the same layers, names and
    operations (rescaling, gray to RGB, four pooled blocks, bottleneck, four up-convolutions
    with skips, sigmoid head); divided by 32, 30,567 parameters instead of 31,031,745. Its files
    take kilobytes and its epochs milliseconds: for checks that do not depend on the model's
    size (resuming, interruptions, determinism, exporting and predicting with run folders)."""
    import keras

    from lungseg.models import build_xunet

    config = narrowed_config(build_xunet, input_shape, divide=divide)
    keras.utils.set_random_seed(seed)
    return keras.Model.from_config(config)


def narrowed_config(build, input_shape, divide=32, **options):
    """The config of the model ``build(input_shape, **options)`` makes, with every layer's
    filters divided by ``divide`` (at least 1): a copy of one worked out once per shape (a
    full-size model draws its 31 M weights: 0.3 s of CPU each time)."""
    return copy.deepcopy(_narrowed_config(build, tuple(input_shape), divide, tuple(sorted(options.items()))))


@functools.cache
def _narrowed_config(build, input_shape, divide, options):
    state = random.getstate()  # Keras seeds each initializer from Python's random module:
    full = build(input_shape, **dict(options))
    random.setstate(state)  # a narrow model draws the same weights, worked out before or not
    config = full.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # input shapes of the full-width layers
        if "filters" in layer["config"]:
            layer["config"]["filters"] = max(1, layer["config"]["filters"] // divide)
    return config


@pytest.fixture(scope="session", autouse=True)
def eager_trainings():
    """Compiled models in the test processes run eagerly (Keras's ``run_eagerly``): tracing a
    model's train and test functions takes seconds of CPU a training stage, whatever the
    model's width, while a tiny training's steps take milliseconds, and what the checks here
    are about (files, records, resuming, refusals) does not depend on it. Uncompiled models
    loaded for inference stay traced, and every training a test starts in a subprocess
    (interruptions, determinism, multi-worker) runs traced, as users run it."""
    from keras.src.trainers.trainer import Trainer

    compile_ = Trainer.compile

    @functools.wraps(compile_)
    def compile(self, *args, **kwargs):
        kwargs.setdefault("run_eagerly", True)
        return compile_(self, *args, **kwargs)

    # On Trainer, where Keras defines it: a model loaded from a file compiles itself only while
    # its class's compile is Trainer's.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "compile", compile)
        yield


@contextlib.contextmanager
def narrow_models(divide=32):
    """While it lasts, lungseg builds narrow X-Unets and V-Unets (``narrow_xunet``'s 1/32 of
    the filters; a V-Unet's random VGG16 encoder too), drawn from the random state as it is:
    for trainings through the command lines whose checks are about what a run records, not
    about the model's size. A V-Unet cannot load VGG16 weights files while it lasts."""
    import keras

    import lungseg.models
    import lungseg.training
    from lungseg.models import build_vunet, build_xunet

    def xunet(input_shape=(256, 256, 1), initializer="glorot_uniform"):
        return keras.Model.from_config(narrowed_config(build_xunet, input_shape, divide, initializer=initializer))

    def vunet(input_shape=(256, 256, 1), encoder_weights="imagenet", initializer="glorot_uniform"):
        assert encoder_weights is None, "narrow V-Unets take no VGG16 weights"
        return keras.Model.from_config(narrowed_config(build_vunet, input_shape, divide, encoder_weights=None,
                                                       initializer=initializer))

    with pytest.MonkeyPatch.context() as patch:
        for module in (lungseg.models, lungseg.training):
            patch.setattr(module, "build_xunet", xunet)
            patch.setattr(module, "build_vunet", vunet)
        yield


@pytest.fixture(scope="session")
def narrow_pretrained(tmp_path_factory):
    """A narrow X-Unet (float32, uncompiled, as a pre-training leaves it) to fine-tune from."""
    from lungseg.inference import save_inference_model

    return save_inference_model(narrow_xunet(), tmp_path_factory.mktemp("narrow") / "pretrained.keras")


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """A tiny stand-in for a pre-trained X-Unet (32 x 32 gray in; a convolution, a pooling, a
    transposed convolution, as a U-Net's kinds of step; a sigmoid mask out) for trainings
    started in subprocesses whose checks are about processes, signals, determinism and files:
    traced in a fraction of a second, where a narrow X-Unet takes seconds."""
    import keras

    from lungseg.inference import save_inference_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, activation="relu", kernel_initializer="he_normal")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    return save_inference_model(model, tmp_path_factory.mktemp("tiny_pretrained") / "tiny.keras")


@pytest.fixture(scope="session")
def narrow_run(tmp_path_factory, tiny_lus, narrow_pretrained):
    """A finished X-Unet run ``x`` (2 folds of 1 epoch on ``tiny_lus``) fine-tuned from the
    narrow pre-trained model: a run folder training wrote, whose files take kilobytes."""
    out = tmp_path_factory.mktemp("narrow_runs")
    code = run_script("train_xunet", "--data", tiny_lus, "--pretrained", narrow_pretrained, "--out", out,
                      "--name", "x", "--epochs", "1", *TINY)
    assert code == 0
    return out / "x"


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
