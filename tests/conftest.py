"""Shared test set-up: quiet TensorFlow, tiny generated data sets and tiny trained runs.

The tiny runs (32 x 32 frames, 2 folds, 1-2 epochs) are trained once per session and shared
by the training, evaluation and reliability tests. Their model files are full size (100-125 MB
each, whatever the frame size), so each shared run is deleted as soon as the last test that
uses it is done, and module-wide folders when their module is done (``module_tmp``): the
session's temporary files stay under 1 GB.
"""

import collections
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

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


# --- shared folders, removed after their last user ------------------------------------------

SHARED = ("vunet_run", "xunet_run")  # session fixtures that hold full-size model files
_users = collections.Counter()  # tests still to run that use each of them
_shared_folders = {}


def pytest_collection_finish(session):
    for item in session.items:
        _users.update(name for name in SHARED if name in getattr(item, "fixturenames", ()))


def _shared_folder(name, folder):
    _shared_folders[name] = folder
    return folder


@pytest.fixture(autouse=True)
def _release_shared_folders(request):
    """After a test, delete the shared runs no later test uses (kept if a test failed)."""
    yield
    for name in SHARED:
        if name in request.fixturenames:
            _users[name] -= 1
            if _users[name] == 0 and name in _shared_folders and not request.session.testsfailed:
                shutil.rmtree(_shared_folders.pop(name), ignore_errors=True)


# With pytest-xdist (make test runs two workers), the tests of the shared runs and those marked
# full_size run on one worker, one after another, so that their model files never add up with
# another worker's (and the shared runs are trained once); every other module runs on one
# worker (its module fixtures are built once). Each worker writes which of its tests are
# full-size into a folder that the controller's scheduler reads. (pytest-xdist's own --dist
# loadgroup would do this from xdist_group marks, but 3.8 tags a test's group by setting
# item._nodeid, which pytest 9 no longer reads: the groups were ignored when tried.)


def full_size(item):
    return item.get_closest_marker("full_size") is not None or any(name in item.fixturenames for name in SHARED)


def pytest_collection_modifyitems(config, items):
    folder = getattr(config, "workerinput", {}).get("lungseg_full_size")
    if folder:
        worker = config.workerinput["workerid"]
        text = "".join(f"{item.nodeid}\n" for item in items if full_size(item))
        (Path(folder) / f"{worker}.tmp").write_text(text)
        (Path(folder) / f"{worker}.tmp").rename(Path(folder) / f"{worker}.txt")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistUnits(), "lungseg-xdist-units")


class XdistUnits:
    """pytest-xdist's hooks (registered only with pytest-xdist active)."""

    folder = None

    def pytest_configure_node(self, node):
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="lungseg-xdist-"))
        node.workerinput["lungseg_full_size"] = str(self.folder)

    def pytest_unconfigure(self, config):
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def pytest_xdist_make_scheduler(self, config, log):
        if config.getvalue("dist") == "each":  # every test on every worker: nothing to group
            return None
        from xdist.scheduler import LoadScopeScheduling

        # Units in collection order, not largest first: the full-size unit (about half of the
        # suite's time) starts early, and modules are left over for the worker that ends it.
        config.option.loadscopereorder = False
        folder = self.folder

        class Scheduling(LoadScopeScheduling):
            """Units of work: the full-size tests together, else each test module."""

            full_size = None

            def _split_scope(self, nodeid):
                if self.full_size is None:  # every worker has collected when scheduling starts
                    self.full_size = {line for path in folder.glob("*.txt") for line in path.read_text().splitlines()}
                return "full_size" if nodeid in self.full_size else nodeid.split("::")[0]

        return Scheduling(config, log)


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


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory):
    """A VGG16 no-top weights file made offline, so stage-1 encoder weights are known: its
    path, sha256 and weights by layer. The V-Unet run deletes the file (59 MB) once trained."""
    import hashlib

    import keras

    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    return SimpleNamespace(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                           layers={layer.name: layer.get_weights() for layer in vgg.layers if layer.weights})


@pytest.fixture(scope="session")
def vunet_run(tmp_path_factory, tiny_lus, vgg_weights):
    """A tiny V-Unet run trained fold 2 first, then fold 1 (so fold gathering is exercised)."""
    out = _shared_folder("vunet_run", tmp_path_factory.mktemp("runs"))
    argv = ["--data", tiny_lus, "--out", out, "--name", "v", "--epochs", "2", "1",
            "--encoder-weights", vgg_weights.path, *TINY]
    codes = [run_script("train_vunet", *argv, "--fold", "2")]
    partial = (out / "v" / "summary.json").read_text()
    codes.append(run_script("train_vunet", *argv, "--fold", "1"))
    vgg_weights.path.unlink()  # no test reads it again (finished runs build no stage-1 model)
    return {"dir": out / "v", "argv": argv, "codes": codes, "partial_summary": partial}


@pytest.fixture(scope="session")
def xunet_run(tmp_path_factory, tiny_lus, tiny_salient):
    out = _shared_folder("xunet_run", tmp_path_factory.mktemp("runs"))
    argv = ["--data", tiny_lus, "--salient", tiny_salient, "--out", out, "--name", "x",
            "--epochs", "1", "--freeze", "bottleneck", *TINY]
    code = run_script("train_xunet", *argv)
    return {"dir": out / "x", "argv": argv, "code": code}


def narrow_xunet(input_shape=(32, 32, 1), divide=32, seed=0):
    """X-Unet with every layer's filters divided by ``divide``: the same layers, names and
    operations (rescaling, gray to RGB, four pooled blocks, bottleneck, four up-convolutions
    with skips, sigmoid head); divided by 32, 30,567 parameters instead of 31,031,745. Its files
    take kilobytes and its epochs milliseconds: for checks that do not depend on the model's
    size (resuming, interruptions, determinism, exporting and predicting with run folders)."""
    import keras

    from lungseg.models import build_xunet

    config = build_xunet(input_shape).get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # input shapes of the full-width layers
        if "filters" in layer["config"]:
            layer["config"]["filters"] = max(1, layer["config"]["filters"] // divide)
    keras.utils.set_random_seed(seed)
    return keras.Model.from_config(config)


@pytest.fixture(scope="session")
def narrow_pretrained(tmp_path_factory):
    """A narrow X-Unet (float32, uncompiled, as a pre-training leaves it) to fine-tune from."""
    from lungseg.inference import save_inference_model

    return save_inference_model(narrow_xunet(), tmp_path_factory.mktemp("narrow") / "pretrained.keras")


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
