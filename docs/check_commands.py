"""Run the commands the docs show, as written, on tiny generated data; exit 1 if one fails.

    python docs/check_commands.py            # every doc: README.md and docs/*.md (minutes)
    python docs/check_commands.py --fast     # what tests/test_docs.py runs (seconds)

Each fenced code block of a doc is one of:

* a synopsis (``lungseg-predict MODEL_OR_RUN INPUT [--out DIR] ...``): every ``--option`` it
  names must be in the command's ``--help``;
* commands: each line is run in a scratch folder where the paths the docs use exist (a tiny
  LUS set at ``LUS`` and ``/path/to/LUS``, a tiny XPIE download at ``/path/to/XPIE``, a
  multi-target sweep at ``/path/to/phantom``, a run
  folder of small models at ``weights/demo_xunet``, a folder of frames at ``scans/``).
  ``python``, ``lungseg-predict`` and ``lungseg-export`` are this interpreter and its
  modules; the training commands get the tiny sizes appended (``TINY``), the only change;
* Python: run with ``frames`` and ``frame`` defined (gray frames of the model's size).

Blocks that show output, folder trees or the multi-machine set-up are listed in ``SKIPPED``
with the reason. Inline commands of the docs that need a particular set-up are run by tests
(tests/test_report_native.py runs lungseg-predict then evaluate.py --masks as
docs/evaluation.md describes).
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this script imports TensorFlow itself
ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Appended to training commands so that they finish in seconds: the only change made.
TINY = ["--preset", "quick", "--image-size", "32", "--lus-frames", "16", "--folds", "2",
        "--epochs", "1", "1", "--batch-size", "4"]
COMMANDS = {  # how a doc's command word runs here
    "python": [sys.executable],
    "lungseg-predict": [sys.executable, "-m", "lungseg.commands.predict"],
    "lungseg-export": [sys.executable, "-m", "lungseg.export"],
}
SYNOPSIS = re.compile(r"\[|\b(?:RUN|MODEL_OR_RUN|INPUT|PATH)\b")
SKIPPED = {  # first words of blocks that are not commands to run
    "warning:": "program output",
    "weights/<name>/": "a folder tree",
    "# machine a (the chief)": "needs two machines (tests/test_multiworker.py runs it on one)",
    "files ──>": "a diagram",
    "make demo": "the Makefile's targets (make demo runs the demo, make test the tests)",
    "OUT=/tmp/beyond": "hours of training (docs/beyond_the_paper.sh)",
    "OUT=/tmp/transfer": "many hours of training (docs/transfer.sh)",
    "OUT=/tmp/real": "hours of training (docs/real_phantom.sh)",
}
SLOW = ("train_vunet.py", "train_xunet.py", "evaluate.py weights/", "--n 300", "--n 120", "--n 60",
        "--subjects 6 --probe")


def blocks(doc):
    """(language, text) of every fenced code block of ``doc``."""
    return re.findall(r"^```(\w*)\n(.*?)^```", Path(doc).read_text(), re.S | re.M)


def command_lines(text):
    """The commands of a shell block: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", text)
    lines = [line.split("  #")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def argv_of(line, where):
    """A doc's command line as an argv for this interpreter, paths mapped to ``where``."""
    words = shlex.split(line)
    words = [str(where[word]) if word in where else word for word in words]
    # The repository's scripts (train_vunet.py, evaluate.py) are run from the scratch folder.
    words = [str(ROOT / word) if word.endswith(".py") and (ROOT / word).is_file() else word for word in words]
    head = COMMANDS.get(words[0])
    if head is None:
        raise ValueError(f"unknown command {words[0]!r} in: {line}")
    words = head + words[1:]
    if any(Path(word).name in ("train_vunet.py", "train_xunet.py") for word in words):
        words += TINY
    return words


def help_text(line):
    """``--help`` of the command a synopsis line starts with."""
    words = shlex.split(line.split("[")[0])
    head = COMMANDS[words[0]] + [word for word in words[1:2] if word.endswith(".py")]
    result = subprocess.run([*head, "--help"], capture_output=True, text=True, cwd=ROOT, env=_env())
    return result.stdout


def check_synopsis(text):
    """Problems of a synopsis block: options its command does not have."""
    line = " ".join(command_lines(text))
    if line.startswith("python") and ".py" in line.split()[1] and not (ROOT / line.split()[1]).is_file():
        return [f"{line.split()[1]}: no such script"]
    known = help_text(line)
    return [f"{option}: not an option of {line.split('[')[0].strip()}"
            for option in dict.fromkeys(re.findall(r"--[a-z][a-z0-9-]*", line)) if option not in known]


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def scratch(folder):
    """Make the paths the docs' commands use under ``folder``; return the doc word -> path map."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from lungseg.config import make_config
    from lungseg.data import write_lus_dataset, write_salient_dataset
    from lungseg.data.io import write_image
    from lungseg.inference import save_inference_model
    import keras

    folder = Path(folder)
    lus = write_lus_dataset(folder / "lus", n=12, seed=1, shape=(96, 32))
    salient = write_salient_dataset(folder / "salient", n=4, seed=2)
    xpie = folder / "XPIE"
    for name, value in (("Y_E_1", 90), ("Y_E_2", 160)):
        image = np.zeros((24, 32, 3), np.uint8)
        image[..., 2] = value
        write_image(xpie / "Images" / f"{name}.jpg", image)
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 8:20] = 255
        write_image(xpie / "Grounds" / f"{name}.png", mask)
    run = folder / "weights" / "demo_xunet"
    run.mkdir(parents=True)
    (run / "config.json").write_text(make_config("xunet", "demo_xunet", "quick", folds=2,
                                                 image_size=(32, 32)).to_json())
    for fold in (1, 2):
        inputs = keras.Input((32, 32, 1))
        outputs = keras.layers.Conv2D(1, 1, activation="sigmoid",
                                      kernel_initializer=keras.initializers.Constant(1.0),
                                      bias_initializer=keras.initializers.Constant(-120.0 - fold))(inputs)
        save_inference_model(keras.Model(inputs, outputs), run / f"fold_{fold}" / "model.keras")
        (run / f"fold_{fold}" / "metrics.json").write_text("{}")  # the fold is finished
    (folder / "runs" / "xunet_paper").mkdir(parents=True)
    os.symlink(run / "fold_1", folder / "runs" / "xunet_paper" / "fold_1")
    phantom = folder / "phantom"  # a multi-target sweep: image/FrameN.png, masks/<target>/FrameN.png
    rng = np.random.default_rng(3)
    for number in range(1, 97, 8):
        frame = np.zeros((48, 64), np.uint8)
        cv2.circle(frame, (32, 0), 40, 1, -1)
        frame *= rng.integers(20, 200, frame.shape, dtype=np.uint8)
        write_image(phantom / "image" / f"Frame{number}.png", frame)
        for target, rows in (("rib_shadow", slice(10, 30)), ("pleural_line", slice(8, 10))):
            mask = np.zeros((48, 64), np.uint8)
            mask[rows, 20:44] = 255
            write_image(phantom / "masks" / target / f"Frame{number}.png", mask)
    scans = folder / "scans"
    scans.mkdir()
    cv2.imwrite(str(scans / "a.png"), cv2.imread(str(next((lus / "IMG").iterdir())), cv2.IMREAD_UNCHANGED))
    return {"/path/to/LUS": lus, "LUS": lus, "/path/to/XPIE": xpie, "XPIE": salient, "scans/": scans,
            "/path/to/phantom": phantom}


def run_block(language, text, folder, where, fast):
    """Problems of one block, run in ``folder``; skipped blocks give none."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    if any(first.startswith(start) for start in SKIPPED):
        return []
    if language == "python":
        frames = __import__("numpy").zeros((2, 32, 32, 1), "uint8")
        namespace = {"frames": frames, "frame": frames[0, ..., 0]}
        cwd = os.getcwd()
        try:
            os.chdir(folder)
            exec(compile(text, "<doc block>", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - a doc block may fail any way
            return [f"python block failed: {type(error).__name__}: {error}\n{text}"]
        finally:
            os.chdir(cwd)
        return []
    if SYNOPSIS.search(text):
        return check_synopsis(text)
    problems = []
    for line in command_lines(text):
        if fast and any(marker in line for marker in SLOW):
            continue
        argv = argv_of(line, where)
        result = subprocess.run(argv, cwd=folder, capture_output=True, text=True, env=_env())
        if result.returncode != 0:
            problems.append(f"{line}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return problems


def check(docs=DOCS, fast=False, folder=None):
    """Every problem of the docs' blocks, as lines naming the doc; run in ``folder`` (made by
    :func:`scratch` there when its map is not given as ``(folder, map)``), else a temporary one."""
    if folder is None:
        with tempfile.TemporaryDirectory() as temporary:
            return check(docs, fast, (temporary, scratch(temporary)))
    folder, where = folder
    problems = []
    for doc in docs:
        for language, text in blocks(doc):
            problems += [f"{Path(doc).name}: {p}" for p in run_block(language, text, folder, where, fast)]
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="*", type=Path, help="docs to check (default: all)")
    parser.add_argument("--fast", action="store_true", help="leave out the commands that train or "
                        "generate hundreds of frames")
    args = parser.parse_args(argv)
    problems = check(args.docs or DOCS, args.fast)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
