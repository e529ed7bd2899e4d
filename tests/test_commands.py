"""Console commands (setup.cfg) and the thin top-level scripts that call the same code."""

import configparser
import importlib
import logging
import os
import subprocess
import sys

import pytest

from conftest import ROOT, load_script

COMMANDS = {
    "lungseg-train-vunet": "train_vunet.py",
    "lungseg-train-xunet": "train_xunet.py",
    "lungseg-evaluate": "evaluate.py",
    "lungseg-predict": None,
    "lungseg-export": None,
}


def console_scripts():
    """{command: "module:function"} from setup.cfg (what ``pip install`` turns into commands)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def resolve(target):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def test_every_step_is_a_console_command_that_resolves_to_a_function():
    scripts = console_scripts()
    assert set(scripts) == set(COMMANDS)
    for command, target in scripts.items():
        assert callable(resolve(target)), command


@pytest.mark.parametrize("command, script", [(c, s) for c, s in COMMANDS.items() if s])
def test_top_level_scripts_call_the_console_commands_code(command, script):
    assert load_script(script[:-3]).main is resolve(console_scripts()[command])
    assert len((ROOT / script).read_text().splitlines()) < 20  # a thin entry point


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_functions_answer_help_and_usage_errors(command, capsys):
    main = resolve(console_scripts()[command])
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-option"])
    assert exit_info.value.code == 2


def test_evaluate_command_runs_as_a_module(tmp_path):
    """What the installed ``lungseg-evaluate`` runs, in a fresh process: help, then a user error."""
    help_ = subprocess.run([sys.executable, "-m", "lungseg.commands.evaluate", "--help"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert help_.returncode == 0, help_.stderr
    assert "Score trained V-Unet and X-Unet runs" in help_.stdout and help_.stderr == ""
    # in an empty folder: the default --out (results/) of a checkout may hold the demo's results
    missing = subprocess.run([sys.executable, "-m", "lungseg.commands.evaluate", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert missing.returncode == 2
    assert missing.stderr == f"error: {tmp_path / 'nope'}: does not exist\n"


def test_installed_commands_match_setup_cfg():
    """Installed from this checkout (make install), lungseg has setup.cfg's commands."""
    from importlib import metadata

    installed = {e.name: e.value for e in metadata.entry_points(group="console_scripts")
                 if e.name.startswith("lungseg-")}
    assert installed == console_scripts(), "setup.cfg changed since the install: run make install"
    for target in installed.values():
        assert callable(resolve(target))


def test_a_commands_warnings_are_one_style_and_reach_its_log_with_what_it_printed_first(tmp_path, capsys):
    """Warnings (the data readers' logged ones too) are ``warning:`` lines on stderr; the run's
    log, opened once the data are read, starts with what the command printed before it."""
    from lungseg.cli import run_main
    from lungseg.console import log, log_to, warn

    def main(argv):
        log("reading frames")
        logging.getLogger("lungseg.data.frames").warning("%s: 3 of 3 masks are soft", "MASK")
        with log_to(tmp_path / "train.log"):
            warn("two lines\nof one warning")
            log("epoch 1")

    assert run_main(main, []) == 0
    captured = capsys.readouterr()
    assert captured.out == "reading frames\nepoch 1\n"
    warnings = "warning: MASK: 3 of 3 masks are soft\nwarning: two lines\nwarning: of one warning\n"
    assert captured.err == warnings
    assert (tmp_path / "train.log").read_text() == f"reading frames\n{warnings}epoch 1\n"
    # Outside a command nothing is kept for a log, and no handler is left behind.
    assert not logging.getLogger("lungseg").handlers
    log("not a command's")
    with log_to(tmp_path / "other.log"):
        pass
    assert (tmp_path / "other.log").read_text() == ""
