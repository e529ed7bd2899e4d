"""Start-up: light imports, Keras finds lungseg's loss when loading, quiet TensorFlow logs."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, narrow_xunet
from lungseg import _startup
from lungseg.data.io import write_image

pytestmark = pytest.mark.long  # a module of half a minute or more (conftest)


HEAVY = ("keras", "tensorflow")


def python(*code, args=(), env=None, timeout=300):
    """Run the ``code`` snippets in a fresh interpreter (this checkout's lungseg)."""
    source = "\n".join(textwrap.dedent(snippet) for snippet in code)
    return subprocess.run(
        [sys.executable, "-c", source, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=env or clean_env(),
    )


def clean_env():
    """This environment without the TensorFlow settings conftest.py makes for the tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# --- light imports ------------------------------------------------------------------------

LOADED = """
import json, runpy, sys
def heavy():
    return sorted(m for m in ("keras", "tensorflow") if m in sys.modules)
"""


def test_light_modules_import_neither_keras_nor_tensorflow():
    result = python(LOADED, """
        import lungseg, lungseg.cli, lungseg.config, lungseg.evaluation, lungseg.progress
        import lungseg.data, lungseg.data.pairs, lungseg.data.frames, lungseg.data.synthetic
        import lungseg.commands.train_vunet, lungseg.commands.train_xunet, lungseg.commands.evaluate
        import lungseg.predict, lungseg.commands.predict, lungseg.model_files, lungseg.report
        print(json.dumps(heavy()))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("command, exit_code", [
    (["train_vunet.py", "--help"], 0),
    (["train_xunet.py", "--help"], 0),
    (["evaluate.py", "--help"], 0),
    (["train_vunet.py", "--epochs", "0"], 2),  # an option error: before any work
    (["train_xunet.py", "--folds", "1"], 2),  # an invalid configuration: the same
    (["-m", "lungseg.commands.predict", "--help"], 0),
    (["-m", "lungseg.commands.evaluate", "--help"], 0),
    (["-m", "lungseg.data", "--help"], 0),
])
def test_help_and_option_errors_import_neither_keras_nor_tensorflow(command, exit_code):
    if command[0] == "-m":
        run = f"runpy.run_module({command[1]!r}, run_name='__main__', alter_sys=True)"
        argv = [command[1], *command[2:]]
    else:
        run = f"runpy.run_path({str(ROOT / command[0])!r}, run_name='__main__')"
        argv = command
    result = python(LOADED, f"""
sys.argv = {argv!r}
try:
    {run}
except SystemExit as exit_:
    code = exit_.code
print(json.dumps([code, heavy()]))
""")
    code, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert code == exit_code, result.stderr
    assert heavy == [], f"{' '.join(command)} imported {heavy}"


def test_generating_and_checking_data_loads_no_tensorflow(tmp_path):
    result = python(LOADED, f"""
from lungseg.data.__main__ import main
codes = [main(["lus", "--n", "2", "--out", {str(tmp_path / 'lus')!r}, "--quiet"]),
         main(["check", {str(tmp_path / 'lus')!r}, "--size", "32", "32", "--quiet"])]
print(json.dumps([codes, heavy()]))
""")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[0, 0], []], result.stderr


def test_a_missing_model_or_fold_is_named_before_tensorflow_loads(tmp_path):
    """lungseg-predict checks the model file or run folder, as it does its options, before
    TensorFlow starts (seconds)."""
    write_image(tmp_path / "frame.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "run" / "fold_1").mkdir(parents=True)
    from lungseg.config import make_config

    (tmp_path / "run" / "config.json").write_text(make_config("xunet", "run", image_size=(32, 32)).to_json())
    result = python(LOADED, f"""
from lungseg.commands.predict import main
frame = {str(tmp_path / 'frame.png')!r}
codes = [main([{str(tmp_path / 'missing.keras')!r}, frame]),
         main([{str(tmp_path / 'run')!r}, frame, "--fold", "1"])]
print(json.dumps([codes, heavy()]))
""")
    codes, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [2, 2] and heavy == [], result.stderr
    assert f"error: {tmp_path / 'missing.keras'}: model file does not exist" in result.stderr
    assert "fold(s) fold_1 not finished" in result.stderr


def test_public_names_are_imported_on_first_use():
    import lungseg
    from lungseg import build_vunet, dice_loss
    from lungseg.losses import dice_loss as defined
    from lungseg.models import build_vunet as built

    assert build_vunet is built and dice_loss is defined
    assert set(lungseg.__all__) <= set(dir(lungseg))
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(lungseg, "no_such_name")
    import lungseg.data

    assert lungseg.data.make_dataset.__module__ == "lungseg.data.pipeline"
    with pytest.raises(AttributeError):
        getattr(lungseg.data, "no_such_name")


# --- Keras finds lungseg's loss and metrics -----------------------------------------------
# The checks that need a fresh interpreter with TensorFlow (seconds of start-up each) run at
# the same time, once per module (``fresh``), and each test reads its own result.


@pytest.fixture(scope="module")
def compiled_model(module_tmp):
    """A narrow X-Unet (conftest.narrow_xunet: X-Unet's layers, 1/32 of the filters) compiled
    with lungseg's Dice loss and metrics, saved to .keras; with the predictions it gave before
    saving, and a digest of its weights."""
    import lungseg

    model = narrow_xunet()
    model.compile("adam", loss=lungseg.dice_loss, metrics=[lungseg.dice_coef, lungseg.iou, "binary_accuracy"])
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 1)).astype(np.float32)
    np.save(module_tmp / "frames.npy", frames)
    np.save(module_tmp / "expected.npy", model.predict(frames, verbose=0))
    model.save(module_tmp / "model.keras")
    return {"path": module_tmp / "model.keras", "weights": weights_digest(model.get_weights())}


def weights_digest(weights):
    return hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest()


# Loads the compiled model; prints its loss and its weights' digest; predicts; warns.
# (Predictions to 1e-6, not bit for bit: these processes run with oneDNN's default, the
# pytest process that saved them without.)
LOAD = """
import sys
{imports}
import hashlib
import numpy as np
model = keras.models.load_model(sys.argv[1])
weights = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in model.get_weights()))
print(model.loss.__name__, weights.hexdigest())
got = model.predict(np.load(sys.argv[2]), verbose=0)
np.testing.assert_allclose(got, np.load(sys.argv[3]), rtol=0, atol=1e-6)
import warnings
warnings.warn("still here")
"""
# Lungseg's losses first, then Keras and TensorFlow (whose tf.keras loads with the same function).
LUNGSEG_FIRST = """
import lungseg.losses
import keras
import tensorflow as tf
assert tf.keras.models.load_model is keras.models.load_model
"""
# Keras first: before lungseg's losses are imported too, the load fails (the control of the
# tests below).
WITHOUT_LUNGSEG = """
import keras
try:
    keras.models.load_model(sys.argv[1])
except Exception as error:
    print("without lungseg:", type(error).__name__, str(error).replace("\\n", " "), file=sys.stderr)
else:
    sys.exit("loaded without lungseg")
import lungseg.losses
"""
IMPORT_ORDERS = {"lungseg first": LUNGSEG_FIRST, "keras first": WITHOUT_LUNGSEG}
TF_NOISE = ("oneDNN", "cuInit", "absl", "cudart", "cpu_feature_guard", "I0000", "E0000")


@pytest.fixture(scope="module")
def fresh(compiled_model, module_tmp):
    """{name: finished process}: the model loaded after each import order (and, Keras first,
    once without lungseg), and lungseg-predict on one frame, plain and with --debug; all
    started together."""
    write_image(module_tmp / "frame.png", np.full((40, 24), 90, np.uint8))
    arrays = [module_tmp / "frames.npy", module_tmp / "expected.npy"]
    commands = {order: ["-c", LOAD.format(imports=imports), compiled_model["path"], *arrays]
                for order, imports in IMPORT_ORDERS.items()}
    for name, options in (("predict", []), ("predict --debug", ["--debug"])):
        out = module_tmp / name.replace(" --", "_")
        commands[name] = ["-m", "lungseg.commands.predict", compiled_model["path"], module_tmp / "frame.png", "--out", out, *options]
    processes = {
        name: subprocess.Popen([sys.executable, *map(str, command)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=ROOT)
        for name, command in commands.items()
    }
    done = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.mark.parametrize("imports", IMPORT_ORDERS)
def test_keras_loads_a_compiled_model_once_lungseg_losses_is_imported(fresh, compiled_model, imports):
    """... with its loss and weights, and predicts as the model that was saved."""
    result = fresh[imports]
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["dice_loss", compiled_model["weights"]]


def test_without_lungseg_keras_cannot_load_it(fresh):
    """The control: the model really needs the registration the tests above rely on (tried
    in the Keras-first process before it imports lungseg)."""
    failed = [line for line in fresh["keras first"].stderr.splitlines()
              if line.startswith("without lungseg:")]
    assert len(failed) == 1 and "dice_loss" in failed[0], failed


# --- quiet TensorFlow ---------------------------------------------------------------------


def test_a_command_that_loads_tensorflow_prints_no_start_up_log(fresh, module_tmp):
    result = fresh["predict"]
    assert result.returncode == 0, result.stderr
    assert "wrote 1 mask(s)" in result.stdout and (module_tmp / "predict" / "frame_mask.png").is_file()
    assert [line for line in result.stderr.splitlines() if any(w in line for w in TF_NOISE)] == []
    assert result.stderr == ""  # one frame: no progress either

    debug = fresh["predict --debug"]
    assert debug.returncode == 0, debug.stderr
    assert "absl::InitializeLog" in debug.stderr or "I0000" in debug.stderr, debug.stderr


def test_python_warnings_and_other_output_pass_the_filter():
    result = python("""
        import os, warnings
        from lungseg._startup import filtered_stderr
        with filtered_stderr(min_level=2):
            os.write(2, b"I0000 00:00:1795793691.103900    5029 port.cc:153] oneDNN custom operations are on.\\n")
            warnings.warn("a real warning")
            os.write(2, b"E0000 00:00:1795793691.2    5029 kernel.cc:12] a real error\\n")
            os.write(2, b"plain text from C\\n")
        warnings.warn("after")
    """)
    assert result.returncode == 0
    err = result.stderr
    assert "UserWarning: a real warning" in err and "UserWarning: after" in err
    assert "a real error" in err and "plain text from C" in err
    assert "oneDNN" not in err


def test_tensorflow_imported_after_lungseg_keeps_real_warnings(fresh):
    """TensorFlow imported after lungseg (not by a command): a model loaded and run, and a
    real warning shown."""
    result = fresh["lungseg first"]
    assert result.returncode == 0, result.stderr
    assert "UserWarning: still here" in result.stderr


def test_filter_drops_only_start_up_noise():
    banner = _startup._ABSL_BANNER + "\n"
    one_dnn = "I0000 00:00:1795793691.103900    5029 port.cc:153] oneDNN custom operations are on.\n"
    no_driver = "I0000 00:00:1795793691.104217    5029 cudart_stub.cc:31] Could not find cuda drivers\n"
    cuinit = ("E0000 00:00:1795793736.860638    5356 cuda_platform.cc:52] failed call to cuInit: "
              "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
    other_error = "E0000 00:00:1795793736.9    5356 kernel.cc:1] out of memory\n"
    warning = "x.py:3: UserWarning: careful\n  warnings.warn('careful')\n"
    text = banner + one_dnn + no_driver + warning + cuinit + other_error
    assert _startup.filter_startup_log(text, min_level=2) == warning + other_error
    # With a CUDA driver (a GPU machine), a failing cuInit is news: it stays.
    assert _startup.filter_startup_log(cuinit, min_level=2) == cuinit
    assert _startup.filter_startup_log(text, min_level=0) == one_dnn + no_driver + warning + other_error


def test_importing_lungseg_changes_nothing_global():
    """No import hook, no environment variable, stderr untouched: only a command (run_main)
    quiets TensorFlow."""
    result = python("""
        import os, sys
        import cv2  # noqa: F401  (OpenCV sets LD_LIBRARY_PATH when imported)
        hooks, environ, stderr = list(sys.meta_path), dict(os.environ), os.fstat(2)
        import lungseg, lungseg.cli, lungseg.data, lungseg.predict, lungseg.report, lungseg.runs
        import lungseg.commands.train_vunet, lungseg.commands.evaluate
        print(sys.meta_path == hooks, dict(os.environ) == environ, os.fstat(2) == stderr)
    """)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr


def test_a_command_quiets_tensorflow_unless_debug():
    result = python("""
        import os, sys
        from lungseg.cli import run_main
        hooks = len(sys.meta_path)
        run_main(lambda argv: 0, ["--debug"])
        print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), len(sys.meta_path) - hooks)
        run_main(lambda argv: 0, [])
        print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), len(sys.meta_path) - hooks)
        run_main(lambda argv: 0, ["--debug"])
        print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
    """)
    assert result.stdout.split() == ["None", "0", "2", "1", "None"], result.stderr
    env = dict(clean_env(), TF_CPP_MIN_LOG_LEVEL="1")  # the user's choice is kept
    result = python("import os; from lungseg.cli import run_main; run_main(lambda argv: 0, []); "
                    "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])", env=env)
    assert result.stdout.strip() == "1"


# --- exit ---------------------------------------------------------------------------------


def test_a_command_freezes_what_is_left_for_a_quick_exit_and_still_runs_atexit():
    """run_main as a command's own call (no argv) freezes the objects left, so that the exit's
    garbage collection skips them; called with argv (from Python, as the tests do) it does not."""
    result = python("""
        import atexit, gc, sys
        from lungseg.cli import run_main
        atexit.register(lambda: print("atexit ran"))
        print(run_main(lambda argv: 0, ["--x"]), gc.get_freeze_count())
        sys.argv = ["lungseg-x", "--y"]
        print(run_main(lambda argv: print(argv) or 3), gc.get_freeze_count() > 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0 0", "['--y']", "3 True", "atexit ran"]
