"""Nothing a user owns is lost (issue 25): --overwrite and --name, export's --out, locks,
unfinished runs, changed data, output folders written whole, options checked first, damaged
JSON, full disks, SIGTERM. Through the command lines, with a narrow X-Unet fine-tuned for one
epoch on 32 x 32 frames (conftest.narrow_pretrained)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY, run_script, snapshot
from lungseg.data.io import write_image
from test_reliability import check_failure

pytestmark = pytest.mark.long  # a module of half a minute or more (conftest)


def finetune(data, pretrained, out, name, *options):
    return ["--data", data, "--out", out, "--name", name, "--pretrained", pretrained,
            "--epochs", "1", *options, *TINY]


def leftovers(folder):
    """Temporary, moved-aside or lock files lungseg left below ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith((".tmp-", ".old-")) or p.name.endswith((".lock", ".replaced")))


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, tiny_lus, narrow_pretrained):
    """A run of two folds with only fold 1 trained."""
    out = tmp_path_factory.mktemp("partial")
    assert run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, out, "p", "--fold", "1")) == 0
    return out / "p"


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("frame") / "scan.png"
    write_image(path, np.random.default_rng(0).integers(0, 256, (40, 36), dtype=np.uint8))
    return path


# --- --name and --overwrite ------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "../outside", "a/b", "/tmp/absolute", "", ".hidden"])
def test_name_must_be_one_plain_folder_name(name, tiny_lus, narrow_pretrained, tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, out, name, "--overwrite"))
    check_failure(code, capsys, "--name", "plain folder name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "runs"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_lus, narrow_pretrained, tmp_path, capsys, copy_of):
    data = copy_of(tiny_lus, tmp_path / "lus")
    before = snapshot(data)
    # --data itself as the run folder: the user's data, no config.json
    code = run_script("train_xunet", *finetune(data, narrow_pretrained, tmp_path, "lus", "--overwrite"))
    check_failure(code, capsys, str(tmp_path / "lus"), "not a lungseg run folder")
    assert snapshot(data) == before


def test_overwrite_refuses_a_run_folder_that_holds_the_data(tiny_lus, narrow_pretrained, tmp_path, capsys, copy_of):
    run = tmp_path / "runs" / "r"
    data = copy_of(tiny_lus, run / "lus")
    (run / "config.json").write_text(json.dumps({"model": "xunet", "name": "r"}))
    (run / "train.log").write_text("an older run\n")
    before = snapshot(run)
    code = run_script("train_xunet", *finetune(data, narrow_pretrained, run.parent, "r", "--overwrite"))
    check_failure(code, capsys, "--overwrite would delete it", str(data))
    assert snapshot(run) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(partial_run, tiny_lus, narrow_pretrained, tmp_path,
                                                                  capsys, monkeypatch, copy_of):
    run = copy_of(partial_run, tmp_path / "p")  # what the same command trained: fold 1
    argv = finetune(tiny_lus, narrow_pretrained, tmp_path, "p", "--fold", "1")
    before = snapshot(run)

    # A replacement that fails after the run folder is made: the old run comes back whole.
    import lungseg.training as training

    def failing(*args, **kwargs):
        assert (tmp_path / ".p.replaced" / "fold_1" / "model.keras").is_file()  # kept aside
        raise training.LungsegError("stage failed on purpose")

    monkeypatch.setattr(training, "train_stage", failing)
    code = run_script("train_xunet", *argv, "--lr", "2e-3", "--overwrite")
    check_failure(code, capsys, "stage failed on purpose")
    assert snapshot(run) == before
    assert leftovers(tmp_path) == []

    # A replacement that finishes: the old run is gone, the new one in its place.
    monkeypatch.undo()
    assert run_script("train_xunet", *argv, "--lr", "2e-3", "--overwrite") == 0
    assert json.loads((run / "config.json").read_text())["finetune"]["learning_rate"] == 2e-3
    assert leftovers(tmp_path) == []


def test_a_replacement_stopped_after_an_epoch_keeps_both_and_resumes(partial_run, tiny_lus, narrow_pretrained,
                                                                    tmp_path, capsys, monkeypatch, copy_of):
    copy_of(partial_run, tmp_path / "p")  # what the same command trained: fold 1
    argv = finetune(tiny_lus, narrow_pretrained, tmp_path, "p", "--fold", "1")
    before = snapshot(tmp_path / "p")
    import lungseg.training as training

    original = training.EpochCheckpoint.on_epoch_end

    def stop_after_saving(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.EpochCheckpoint, "on_epoch_end", stop_after_saving)
    again = [*argv, "--epochs", "2", "--overwrite"]
    assert run_script("train_xunet", *again) == 130
    assert snapshot(tmp_path / ".p.replaced") == before  # the old run, whole, aside
    assert "stays in" in capsys.readouterr().out
    monkeypatch.undo()
    assert run_script("train_xunet", *again) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1 of 2" in out and "removed the replaced run" in out
    assert leftovers(tmp_path) == []
    assert json.loads((tmp_path / "p" / "config.json").read_text())["finetune"]["epochs"] == 2


def test_options_refused_late_leave_no_run_folder(tiny_lus, narrow_pretrained, tmp_path, capsys):
    """Grouped folds for a single group fail before the run folder is written; the corrected
    command then runs."""
    argv = finetune(tiny_lus, narrow_pretrained, tmp_path, "g", "--fold", "1", "--split", "grouped")
    check_failure(run_script("train_xunet", *argv, "--groups", "(lung)"), capsys, "grouped folds", "1 group")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "_synthetic") == []
    assert run_script("train_xunet", *argv) == 0


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tiny_lus, tmp_path, capsys):
    """V-Unet with a weights file that is missing: no run folder is left to block the fix."""
    argv = ["--data", tiny_lus, "--out", tmp_path, "--name", "v", "--epochs", "1", *TINY]
    code = run_script("train_vunet", *argv, "--encoder-weights", tmp_path / "missing.h5")
    check_failure(code, capsys, "missing.h5")
    assert not (tmp_path / "v").exists() and leftovers(tmp_path) == []


# --- export ---------------------------------------------------------------------------------


def test_export_overwrite_replaces_only_a_saved_model_and_never_its_source(partial_run, tiny_lus, tmp_path,
                                                                           capsys, copy_of):
    from lungseg.export import main as export

    model = partial_run / "fold_1" / "model.keras"
    data = copy_of(tiny_lus, tmp_path / "lus")
    before = snapshot(data)
    for out, fmt, words in [
        (data, "saved_model", ["not a SavedModel folder"]),
        (partial_run, "saved_model", ["being exported"]),
        (partial_run / "fold_1", "saved_model", ["being exported"]),
        (model, "keras", ["being exported"]),
    ]:
        check_failure(export([str(model), "--format", fmt, "--out", str(out), "--overwrite"]), capsys, *words)
    assert snapshot(data) == before
    assert model.is_file()


# --- locks ----------------------------------------------------------------------------------


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_process_is_refused_naming_the_holder(tiny_lus, narrow_pretrained, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / ".c.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "today"}))
        code = run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, tmp_path, "c"))
        check_failure(code, capsys, f"process {holder.pid} on {socket.gethostname()}")
        assert not (tmp_path / "c").exists()
        # per fold: fold 1's job holds its lock; fold 2's job runs, fold 1's is refused
        lock.rename(tmp_path / ".c.fold_1.lock")
        check_failure(run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, tmp_path, "c", "--fold", "1")),
                      capsys, f"process {holder.pid}")
        assert run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, tmp_path, "c", "--fold", "2")) == 0
        assert (tmp_path / ".c.fold_1.lock").exists()  # the holder's, left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_lus, narrow_pretrained, tmp_path, capsys):
    pid = _dead_pid()
    (tmp_path / ".s.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, tmp_path, "s")) == 0
    assert f"took over the lock of process {pid}" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_lock_file_refuses_a_second_holder_and_releases(tmp_path):
    from lungseg.runs import RunLockedError, lock_file

    with lock_file(tmp_path / ".x.lock", "x"):
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            with lock_file(tmp_path / ".x.lock", "x"):
                pass
    assert not (tmp_path / ".x.lock").exists()
    with lock_file(tmp_path / ".x.lock", "x"):  # free again
        pass


# --- unfinished runs and changed data ------------------------------------------------------


def test_evaluate_predict_and_export_refuse_an_unfinished_run_unless_allowed(partial_run, frame, tmp_path, capsys):
    from lungseg.export import main as export
    from lungseg.commands.predict import main as predict

    for command in (lambda: run_script("evaluate", partial_run, "--out", tmp_path / "results"),
                    lambda: predict([str(partial_run), str(frame), "--out", str(tmp_path / "masks")]),
                    lambda: export([str(partial_run), "--format", "keras", "--out", str(tmp_path / "m.keras")])):
        check_failure(command(), capsys, "unfinished run", "fold_2", "--allow-partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    assert export([str(partial_run), "--format", "keras", "--out", str(tmp_path / "m.keras"), "--allow-partial"]) == 0
    assert run_script("evaluate", partial_run, "--out", tmp_path / "results", "--allow-partial") == 0
    assert any(line.startswith("warning: ") and "scoring 1 of 2 folds (fold_2 missing" in line
               for line in capsys.readouterr().err.splitlines())
    assert predict([str(partial_run), str(frame), "--out", str(tmp_path / "masks"), "--allow-partial"]) == 0
    assert "using 1 of 2 folds (fold_2 missing" in capsys.readouterr().err
    assert (tmp_path / "masks" / "scan_mask.png").is_file()
    check_failure(predict([str(partial_run), str(frame), "--fold", "2", "--out", str(tmp_path / "m2")]),
                  capsys, "fold_2 not finished (finished: fold_1)")
    check_failure(export([str(partial_run), "--fold", "3", "--format", "keras", "--out", str(tmp_path / "m3.keras")]),
                  capsys, "no fold_3: the run has 2 folds")


def test_resuming_on_changed_frames_is_refused_naming_them(tiny_lus, narrow_pretrained, tmp_path, capsys, copy_of):
    data = copy_of(tiny_lus, tmp_path / "lus")
    argv = finetune(data, narrow_pretrained, tmp_path / "runs", "d")
    assert run_script("train_xunet", *argv, "--fold", "1") == 0
    assert len(json.loads((tmp_path / "runs" / "d" / "frames.json").read_text())["frames"]) == 16
    masks = sorted((data / "MASK").iterdir())
    mask = np.zeros((960, 128), np.uint8)
    mask[100:120, 20:100] = 255
    write_image(masks[0], mask)  # the same name, other content
    before = snapshot(tmp_path / "runs")
    code = run_script("train_xunet", *argv, "--fold", "2")
    err = check_failure(code, capsys, "differ from those this run trained on", "changed:")
    stem = masks[0].stem.removeprefix("mask_")
    assert stem in err
    assert snapshot(tmp_path / "runs") == before


def test_out_spelled_another_way_resumes_the_same_run(tiny_lus, narrow_pretrained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, "runs", "o", "--fold", "1")) == 0
    argv = finetune(tiny_lus, narrow_pretrained, f"{tmp_path}/runs/", "o", "--fold", "2")
    assert run_script("train_xunet", *argv) == 0
    assert "resuming the unfinished run" in capsys.readouterr().out


# --- output folders -------------------------------------------------------------------------


def test_predict_output_is_written_whole_or_not_at_all(partial_run, frame, tmp_path, capsys, monkeypatch):
    import lungseg.commands.predict as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        shutil.copy(frame, inputs / f"{name}.png")
    out = tmp_path / "masks"
    argv = [str(partial_run / "fold_1" / "model.keras"), str(inputs), "--out", str(out)]
    assert predict.main(argv) == 0
    before = snapshot(out)
    calls = []
    original = predict._predict_source

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "_predict_source", interrupted)
    assert predict.main(argv) == 130
    assert snapshot(out) == before  # not a new a_mask.png beside the old predictions.csv
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    (inputs / "b.png").unlink()
    assert predict.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_overlay.png", "predictions.csv"]


def test_what_a_killed_writer_left_beside_an_output_is_tidied(tmp_path):
    from lungseg.files import written_whole

    dead = _dead_pid()
    out = tmp_path / "results"
    (tmp_path / f".tmp-{dead}-results").mkdir()  # killed while writing
    (tmp_path / f".old-{dead}-results").mkdir()  # killed between its two renames
    (tmp_path / f".old-{dead}-results" / "results.md").write_text("previous")
    (tmp_path / f".tmp-{os.getpid() + 1}-other").mkdir()  # another output's: left alone
    assert not out.exists()
    with written_whole(out) as folder:
        assert (out / "results.md").read_text() == "previous"  # put back first
        (folder / "results.md").write_text("new")
    assert (out / "results.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-{os.getpid() + 1}-other", "results"]


def test_predict_out_inside_an_input_or_run_or_a_foreign_folder_is_refused(partial_run, frame, tmp_path, capsys):
    from lungseg.commands.predict import main as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(frame, inputs / "a.png")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    model = partial_run / "fold_1" / "model.keras"
    before = snapshot(partial_run)
    for out, words in [(inputs / "masks", ["inside the input"]), (inputs, ["is the input"]),
                       (tmp_path, ["holds the input"]), (partial_run / "masks", ["run folder"]),
                       (foreign, ["not a predictions folder"])]:
        check_failure(predict([str(model), str(inputs), "--out", str(out)]), capsys, *words)
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png"]
    assert (foreign / "notes.txt").read_text() == "mine"
    assert snapshot(partial_run) == before


def test_an_out_that_is_or_holds_the_working_folder_is_refused(partial_run, frame, tmp_path, capsys,
                                                                monkeypatch):
    from lungseg.commands.predict import main as predict

    work = tmp_path / "work"
    work.mkdir()
    (work / "results.md").write_text("mine")
    (work / "predictions.csv").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", "./", str(tmp_path)):
        check_failure(run_script("evaluate", partial_run, "--out", out, "--allow-partial"), capsys, "working folder")
        check_failure(predict([str(partial_run), str(frame), "--out", out, "--allow-partial"]), capsys,
                      "working folder")
    assert sorted(p.name for p in work.iterdir()) == ["predictions.csv", "results.md"]


def test_evaluate_out_onto_or_inside_a_run_folder_is_refused(partial_run, tmp_path, capsys, copy_of):
    other = copy_of(partial_run, tmp_path / "other", link=True)
    before, other_before = snapshot(partial_run), snapshot(other)
    for out, words in [(partial_run, ["is the input"]), (partial_run / "results", ["inside the input"]),
                       (partial_run.parent, ["holds the input"]), (other, ["is a run folder"]),
                       (other / "fold_1" / "results", ["inside the run folder"])]:
        check_failure(run_script("evaluate", partial_run, "--out", out, "--allow-partial"), capsys, *words)
    assert snapshot(partial_run) == before and snapshot(other) == other_before


def test_an_interrupted_evaluate_leaves_the_previous_results(partial_run, tmp_path, monkeypatch, capsys):
    import lungseg.figures as figures

    results = tmp_path / "results"
    assert run_script("evaluate", partial_run, "--out", results, "--allow-partial") == 0
    before = snapshot(results)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "save_figure", interrupted)
    assert run_script("evaluate", partial_run, "--out", results, "--allow-partial") == 130
    assert snapshot(results) == before  # not new tables beside old figures
    assert leftovers(tmp_path) == []


# --- options, damaged files, full disks, SIGTERM --------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["--seed", "from 0 to"]),
    (["--seed", "99999999999"], ["--seed", "from 0 to"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--image-size", "100000"], ["--image-size", "at most 4096"]),
    (["--lus-frames", "100000000"], ["--lus-frames", "at most"]),
    (["--batch-size", "99999999999"], ["--batch-size", "at most"]),
    (["--epochs", "0"], ["--epochs", "positive"]),
])
def test_numeric_options_are_finite_and_in_range(argv, words, tiny_lus, tmp_path, capsys):
    code = run_script("train_xunet", "--data", tiny_lus, "--out", tmp_path / "runs", *TINY, *argv)
    check_failure(code, capsys, *words)
    assert not (tmp_path / "runs").exists()


def test_empty_paths_and_an_out_inside_the_data_are_refused(tiny_lus, tmp_path, capsys, copy_of):
    data = copy_of(tiny_lus, tmp_path / "lus")
    before = snapshot(data)
    check_failure(run_script("train_xunet", "--data", "", "--out", tmp_path / "runs", *TINY), capsys,
                  "--data must not be empty")
    check_failure(run_script("train_xunet", "--data", data, "--out", data / "runs", *TINY), capsys,
                  "--out is --data", str(data))
    assert snapshot(data) == before and not (tmp_path / "runs").exists()


def test_a_training_out_inside_a_run_folder_is_refused(partial_run, tiny_lus, narrow_pretrained, tmp_path, capsys,
                                                       copy_of):
    run = copy_of(partial_run, tmp_path / "p", link=True)
    before = snapshot(run)
    for out in (run, run / "fold_1"):
        code = run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, out, "inner"))
        check_failure(code, capsys, f"--out is the run folder {run}")
    assert snapshot(run) == before


def test_a_huge_generated_set_is_refused_first(tmp_path, capsys):
    code = run_script("train_xunet", "--out", tmp_path / "runs", *TINY, "--lus-frames", "900000")
    check_failure(code, capsys, "--lus-frames 900000 without --data", "give --data")
    assert not (tmp_path / "runs").exists()


def test_vunet_image_size_below_vgg16s_minimum_is_refused_first(tiny_lus, tmp_path, capsys):
    code = run_script("train_vunet", "--data", tiny_lus, "--out", tmp_path / "runs", *TINY,
                      "--image-size", "16", "--encoder-weights", "none")
    check_failure(code, capsys, "at least 32 for V-Unet")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, words", [
    (["--spacing", "inf"], ["--spacing", "finite"]),
    (["--min-size", "-3"], ["--min-size", "from 0"]),
])
def test_evaluate_numeric_options(argv, words, partial_run, tmp_path, capsys):
    check_failure(run_script("evaluate", partial_run, "--out", tmp_path / "r", *argv), capsys, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damaged", ["config.json", "summary.json", "splits.json"])
def test_damaged_json_is_one_error_naming_the_file(damaged, partial_run, frame, tmp_path, capsys, copy_of):
    from lungseg.commands.predict import main as predict

    run = copy_of(partial_run, tmp_path / "p", link=True)
    (run / damaged).unlink()
    (run / damaged).write_text('{"model": "xunet", "fol')
    commands = [lambda: run_script("evaluate", run, "--out", tmp_path / "r", "--allow-partial")]
    if damaged == "config.json":
        commands.append(lambda: predict([str(run), str(frame), "--out", str(tmp_path / "m"), "--allow-partial"]))
    for command in commands:
        err = check_failure(command(), capsys, str(run / damaged), "damaged")
        assert len([line for line in err.splitlines() if not line.startswith("warning: ")]) == 1, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


def test_a_config_of_wrong_values_is_one_error_naming_it(partial_run, tmp_path, capsys, copy_of):
    run = copy_of(partial_run, tmp_path / "p", link=True)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").unlink()
    (run / "config.json").write_text(json.dumps({**config, "folds": "two"}))
    err = check_failure(run_script("evaluate", run, "--out", tmp_path / "r", "--allow-partial"), capsys,
                        str(run / "config.json"), "not a valid run configuration")
    assert len(err.strip().splitlines()) == 1


def test_a_resume_on_a_damaged_config_names_it(partial_run, tiny_lus, narrow_pretrained, tmp_path, capsys, copy_of):
    run = copy_of(partial_run, tmp_path / "p", link=True)
    (run / "config.json").unlink()
    (run / "config.json").write_text("")
    code = run_script("train_xunet", *finetune(tiny_lus, narrow_pretrained, tmp_path, "p", "--fold", "2"))
    check_failure(code, capsys, str(run / "config.json"))


def test_a_full_disk_names_the_file(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from lungseg.cli import run_main
    from lungseg.files import write_json

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    assert run_main(lambda argv: write_json(tmp_path / "summary.json", {}), []) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'summary.json'}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_is_handled_as_ctrl_c(tmp_path, capsys):
    from lungseg.cli import run_main
    from lungseg.files import written_whole

    before = signal.getsignal(signal.SIGTERM)

    def terminated(argv):
        with written_whole(tmp_path / "out") as folder:
            (folder / "half.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)

    assert run_main(terminated, [], resume_hint="Run it again.") == 143
    assert capsys.readouterr().err == "\nterminated (SIGTERM). Run it again.\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # run_main put the handler back


def test_sigterm_whose_exception_c_code_lost_or_changed_still_ends_as_sigterm(capsys):
    """C code a signal lands in may swallow its exception (the run went on to exit 0 on a CI
    machine) or turn it into another one (NumPy's __array__ protocol gave a TypeError)."""
    from lungseg.cli import run_main, stop_if_terminated

    def swallowed(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass  # as C code that clears the error would
        stop_if_terminated()  # the training's next step
        raise AssertionError("not stopped")

    def changed(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            raise TypeError("__array__() got an unexpected keyword argument 'copy'")

    for main in (swallowed, changed):
        assert run_main(main, [], resume_hint="Run it again.") == 143
        assert capsys.readouterr().err == "\nterminated (SIGTERM). Run it again.\n"
    with pytest.raises(TypeError):  # without SIGTERM the same error is a bug, shown as one
        run_main(lambda argv: int([]), [])
    stop_if_terminated()  # run_main leaves the flag clear for the next command


def test_sigterm_stops_a_training_that_the_same_command_resumes(tiny_lus, tiny_pretrained, tmp_path, capsys):
    from conftest import ROOT
    from test_interruptions import epochs_in_history, saved_epoch

    epochs = 10  # a tenth of a second or more each (the tiny stand-in): SIGTERM lands mid-stage
    argv = [str(a) for a in finetune(tiny_lus, tiny_pretrained, tmp_path, "t", "--fold", "1")]
    argv[argv.index("--epochs") + 1] = str(epochs)
    process = subprocess.Popen([sys.executable, str(ROOT / "train_xunet.py"), *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    saved_epoch(tmp_path / "t" / "fold_1" / "state" / "state.json", 1, process)
    assert process.poll() is None, "the run ended before SIGTERM: give it more epochs"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM). Run the same command again to resume" in err
    assert "Traceback" not in err and leftovers(tmp_path) == []
    assert run_script("train_xunet", *argv) == 0
    assert "resuming after epoch" in capsys.readouterr().out
    assert epochs_in_history(tmp_path / "t") == [str(epoch) for epoch in range(epochs)]
