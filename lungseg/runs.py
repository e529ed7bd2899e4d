"""The run folder: the one place that knows its layout and reads and writes its files.

Training writes a run folder, evaluation, prediction and the figures read it; nothing else
builds a path inside one. A run folder is self-contained: paths in its ``config.json`` are
absolute (the user's data) and generated data is found beside it or made again from its
recorded size and seed, so a copied or moved run folder opened from any working directory
evaluates and predicts as it did in place::

    config.json   splits.json   summary.json   train.log   frames.json
    stage1/ or pretrain/   model.keras (best by val_loss)  history.csv  metrics.json
                           state/ (state.json, epoch_N.weights.h5: the resume state)
    fold_1/ ... fold_k/    the same
    stage1_fold_1/ ...     the same: V-Unet's stage 1 of each fold (--stage1-scope fold),
                           in place of stage1/

Beside it, in the folder that holds it: ``.<name>.lock`` and ``.<name>.fold_k.lock`` (the
locks), ``.<name>.replaced`` (a run ``--overwrite`` replaces) and ``_synthetic/`` (generated
data sets). The frames a run trains on are loaded by ``lungseg.data.run_frames``.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

from lungseg.config import GROUP_FIELDS, PATH_FIELDS, RUN_FIELDS, RunConfig, option_flag, option_text
from lungseg.console import log, warn
from lungseg.errors import ConfigError, DataError, LungsegError, RunExistsError
from lungseg.files import is_within, process_gone, read_json, resolved, write_json, write_text

CONFIG = "config.json"
SPLITS = "splits.json"
SUMMARY = "summary.json"
LOG = "train.log"
MODEL = "model.keras"
HISTORY = "history.csv"
METRICS = "metrics.json"
STATE = "state"  # a stage's resume state: state.json pointing to epoch_N.weights.h5
STATE_FILE = "state.json"
FRAMES = "frames.json"  # a digest of each LUS frame the run trained on, checked on resume
SYNTHETIC = "_synthetic"  # generated data sets, beside the run folders that use them
MODEL_NAMES = {"vunet": "V-Unet", "xunet": "X-Unet"}


def stage1_name(model):
    """The first stage's folder: V-Unet's decoder stage or X-Unet's pre-training."""
    return "pretrain" if model == "xunet" else "stage1"


def fold_name(k):
    return f"fold_{k}"


def check_name(name):
    """``--name`` must be one plain folder name: no separators, ``.``, ``..`` or absolute path,
    so that a run folder is always a new or a run folder directly inside ``--out``."""
    text = str(name)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or text != text.strip() or text.startswith(".")):
        raise ConfigError(f"--name must be a plain folder name (no '/', no leading '.', not "
                          f"'.' or '..'), got {text!r}")
    return text


def display_name(model, encoder_weights_used=None):
    """``V-Unet``, ``X-Unet``, or ``V-Unet (random encoder)`` when the VGG16 was not loaded."""
    name = MODEL_NAMES.get(model, "model")
    if model == "vunet" and (encoder_weights_used or {}).get("weights") == "random":
        name += " (random encoder)"
    return name


def is_run_folder(folder):
    """True for a folder training wrote: its ``config.json`` and its log, splits or summary."""
    folder = Path(folder)
    return (folder / CONFIG).is_file() and any((folder / name).exists() for name in (LOG, SPLITS, SUMMARY))


def run_folder_around(path):
    """The run folder that ``path`` is or lies inside (resolved), or None: where no results or
    runs may be written, since they would be lost among the run's files."""
    path = resolved(path)
    return next((folder for folder in (path, *path.parents) if is_run_folder(folder)), None)


def check_output_folder(out, kind, marker, inputs=()):
    """Refuse an output folder ``out`` that lungseg may not replace, before any work.

    ``out`` is written whole and renamed into place (``lungseg.files.written_whole``),
    replacing what is there; so it must be absent, empty, or a folder this command wrote before
    (it holds ``marker``), must not equal, hold or lie inside any of ``inputs`` (folders or
    files read), and must not lie inside a run folder (its ``config.json`` would be lost among
    results).
    """
    out = Path(out)
    target = resolved(out)
    if is_within(Path.cwd(), target) or target == Path.home():
        raise LungsegError(f"{out}: is the working folder, holds it or is the home folder; "
                           "choose an --out of its own")
    for given in inputs:
        if given is None:
            continue
        if is_within(target, given) or is_within(given, target):
            where = "is" if resolved(given) == target else (
                "is inside" if is_within(target, given) else "holds")
            raise LungsegError(f"{out}: the {kind} folder {where} the input {given}; "
                               "choose an --out outside the inputs")
    run = run_folder_around(target)
    if run is not None:
        raise LungsegError(f"{out}: is {'a' if run == target else 'inside the'} run folder "
                           f"{run}; choose an --out outside run folders")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LungsegError(f"{out}: cannot create the output folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LungsegError(f"{out}: output folder is not writable (no write permission on {existing})")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise LungsegError(f"{out}: exists and is not a {kind} folder (no {marker}); lungseg "
                           "replaces only what it wrote: choose another --out or empty it")
    if target.is_dir() and not os.access(target.parent, os.W_OK | os.X_OK):
        raise LungsegError(f"{out}: cannot be replaced (no write permission on {target.parent})")


_UNREAD = object()  # a RunFolder's config.json before it is first read


def _difference(key, saved, current):
    """One option's saved and current values as a user types them (a stage's settings, the
    ones that differ): ``--loss: dice in the run, dice_bce now``."""
    if dataclasses.is_dataclass(saved) and dataclasses.is_dataclass(current):
        saved, current = dataclasses.asdict(saved), dataclasses.asdict(current)
        return "; ".join(f"{key} {name}: {option_text(saved[name])} in the run, {option_text(current[name])} now"
                         for name in saved if saved[name] != current[name])
    spec = RUN_FIELDS[key].metadata.get("option") if key in RUN_FIELDS else None
    if spec and spec["action"] == "store_false":  # --no-flips is on when flips is False
        saved, current = not saved, not current
    return f"{option_flag(key) if spec else key}: {option_text(saved)} in the run, {option_text(current)} now"


class RunFolder:
    """A run folder on disk and its configuration."""

    def __init__(self, root, config: RunConfig):
        self.root = Path(root)
        self.config = config
        self.stage1 = stage1_name(config.model)
        self._saved_text = _UNREAD  # config.json as first read (saved_config_text)

    @classmethod
    def for_config(cls, config):
        """Where training writes the run of ``config``: ``--out/--name``."""
        return cls(Path(config.out) / check_name(config.name), config)

    @classmethod
    def open(cls, path):
        """An existing run folder; ``DataError`` when ``path`` is not one."""
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise DataError(f"{path}: not a run folder (no {CONFIG}) nor a .keras model file")
        try:
            config = RunConfig.from_dict(read_json(path / CONFIG)).validate()
        except DataError:
            raise
        except (LungsegError, TypeError, ValueError, AttributeError, KeyError) as error:
            raise DataError(f"{path / CONFIG}: not a valid run configuration ({error}); restore "
                            "it, or train the run again") from None
        return cls(path, config)

    @classmethod
    def containing(cls, model_path):
        """The run folder holding ``model_path`` (``<run>/<stage>/model.keras``), or None."""
        model_path = Path(model_path).resolve()
        for folder in (model_path.parent.parent, model_path.parent):
            try:
                return cls.open(folder)
            except (LungsegError, OSError, ValueError, TypeError):
                continue
        return None

    @property
    def label(self):
        return self.root.name

    # --- layout ----------------------------------------------------------------------------

    def stage_dir(self, stage):
        return self.root / stage

    def fold_names(self):
        return [fold_name(k) for k in range(1, self.config.folds + 1)]

    @property
    def stage1_per_fold(self):
        """Whether each fold trains its own stage 1 (V-Unet, ``--stage1-scope fold``)."""
        return self.config.stage1_scope == "fold"

    def fold_stage1(self, k):
        """Fold ``k``'s own stage 1 (``--stage1-scope fold``): ``stage1_fold_k``."""
        return f"{self.stage1}_{fold_name(k)}"

    def stage1_names(self, fold=None):
        """The stage 1s that training fold ``fold`` (every fold when None) trains first: each
        fold's own with ``--stage1-scope fold``, else the one the folds share."""
        if not self.stage1_per_fold:
            return [self.stage1]
        return [self.fold_stage1(k) for k in ([fold] if fold else range(1, self.config.folds + 1))]

    def stages(self):
        """Every stage of the protocol in order (stage 1 only when it is trained here; with
        ``--stage1-scope fold`` each fold's own stage 1 just before the fold)."""
        if self.config.pretrained:
            return self.fold_names()
        if self.stage1_per_fold:
            return [stage for k, fold in enumerate(self.fold_names(), 1) for stage in (self.fold_stage1(k), fold)]
        return [self.stage1] + self.fold_names()

    def model_path(self, stage):
        return self.stage_dir(stage) / MODEL

    def history_path(self, stage):
        return self.stage_dir(stage) / HISTORY

    def metrics_path(self, stage):
        return self.stage_dir(stage) / METRICS

    def state_dir(self, stage):
        """A stage's resume state (``state.json`` and the weights it points to)."""
        return self.stage_dir(stage) / STATE

    def state_path(self, stage):
        return self.state_dir(stage) / STATE_FILE

    @property
    def config_path(self):
        return self.root / CONFIG

    @property
    def splits_path(self):
        return self.root / SPLITS

    @property
    def summary_path(self):
        return self.root / SUMMARY

    @property
    def log_path(self):
        return self.root / LOG

    @property
    def frames_path(self):
        return self.root / FRAMES

    def generated_set(self, kind, n):
        """Where the generated ``kind`` set of ``n`` frames (this run's seed) lies, beside the
        run folder so that runs of one ``--out`` share it."""
        return self.root.parent / SYNTHETIC / f"{kind}_{n}_seed{self.config.seed}"

    def is_done(self, stage):
        return self.metrics_path(stage).is_file()

    def finished_folds(self):
        """Names of the folds whose model and metrics are written."""
        return [f for f in self.fold_names() if self.is_done(f) and self.model_path(f).is_file()]

    def missing_folds(self):
        """Names of the folds not finished yet."""
        finished = self.finished_folds()
        return [f for f in self.fold_names() if f not in finished]

    def check_finished(self, allow_partial=False, folds=None):
        """Refuse (``DataError``) a run whose folds (or the ``folds`` asked) are not all
        finished, naming them, unless ``allow_partial``; return the finished folds to use."""
        finished = self.finished_folds()
        if folds:
            unknown = [fold for fold in folds if fold not in self.fold_names()]
            if unknown:
                raise DataError(f"{self.root}: no {', '.join(unknown)}: the run has "
                                f"{self.config.folds} folds (fold_1 ... fold_{self.config.folds})")
            missing = [fold for fold in folds if fold not in finished]
            if missing:
                raise DataError(f"{self.root}: fold(s) {', '.join(missing)} not finished "
                                f"(finished: {', '.join(finished) or 'none'})")
            return list(folds)
        if not finished:
            raise DataError(f"{self.root}: no finished fold (fold_k/model.keras); finish training first")
        missing = self.missing_folds()
        if missing and not allow_partial:
            raise DataError(f"{self.root}: unfinished run: {', '.join(missing)} of {self.config.folds} "
                            f"folds not trained (finished: {', '.join(finished)}); finish training, "
                            "or give --allow-partial to use the finished folds only")
        return finished

    def fold_models(self, allow_partial=False, folds=None, doing="using"):
        """{fold: model file} of the folds to use (``check_finished``); an unfinished run's
        finished folds are used with ``allow_partial`` and a warning saying what is ``doing``."""
        chosen = self.check_finished(allow_partial, folds)
        missing = self.missing_folds()
        if missing and not folds:
            warn(f"{self.root}: unfinished run: {doing} {len(chosen)} of {self.config.folds} folds "
                 f"({', '.join(missing)} missing; --allow-partial)")
        return {fold: self.model_path(fold) for fold in chosen}

    def is_finished(self):
        return (self.summary_path).is_file() and (self.read_summary() or {}).get("complete", False)

    # --- files ---------------------------------------------------------------------------

    def read_metrics(self, stage):
        return read_json(self.metrics_path(stage)) if self.is_done(stage) else None

    def write_metrics(self, stage, metrics):
        write_json(self.metrics_path(stage), metrics)

    def read_splits(self):
        from lungseg.data.splits import read_splits

        return read_splits(self.splits_path)

    def write_splits(self, splits):
        write_json(self.splits_path, splits)

    def has_splits(self):
        return (self.splits_path).is_file()

    def saved_config_text(self):
        """The text of ``config.json`` as this object first read it (None when there was none):
        a run's start reads it once, for the precision it chose (``saved_precision``) and the
        options it differs in (``create``)."""
        if self._saved_text is _UNREAD:
            self._saved_text = self.config_path.read_text() if self.config_path.is_file() else None
        return self._saved_text

    def saved_precision(self, overwrite=False):
        """The precision an unfinished run of this folder chose (``auto`` keeps it on resume)."""
        if overwrite or self.saved_config_text() is None:
            return None
        return read_json(self.config_path, self.saved_config_text()).get("precision")

    def read_summary(self):
        summary = read_json(self.summary_path) if (self.summary_path).is_file() else None
        if summary is not None and not isinstance(summary, dict):
            raise DataError(f"{self.summary_path}: damaged (a JSON object expected)")
        return summary

    def write_summary(self, summary):
        write_json(self.summary_path, summary)

    @contextmanager
    def logging(self):
        """Copy what the run prints into ``train.log`` (appended on resume)."""
        from lungseg.console import log_to

        with log_to(self.log_path):
            yield

    def copy_to(self, root):
        """Copy this run folder's files into ``root`` (a non-chief worker's scratch copy of the
        chief's run, to resume from the same state); return the run folder there.

        ``train.log`` stays (the copy keeps its own log), and so do other processes' temporary
        files (``.tmp-<pid>-...``). A file that disappears while it is copied is skipped: the
        chief may be tidying a stage killed in its first epoch, which the copy then tidies alike.
        """
        root = Path(root)
        if self.root.is_dir():
            for source in sorted(self.root.rglob("*")):
                relative = source.relative_to(self.root)
                if relative == Path(LOG) or any(part.startswith((".tmp-", ".old-")) for part in relative.parts):
                    continue
                target = root / relative
                try:
                    if source.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(source, target)
                except FileNotFoundError:
                    continue
        return RunFolder(root, self.config)

    def replaced_path(self):
        """Where ``--overwrite`` keeps the run it replaces until the new one has finished."""
        return self.root.parent / f".{self.root.name}.replaced"

    def has_progress(self):
        """True when a stage of this run has saved an epoch or finished (work worth keeping)."""
        return self.root.is_dir() and any(
            any(self.root.glob(pattern)) for pattern in (f"*/{STATE}/{STATE_FILE}", f"*/{METRICS}", f"*/{MODEL}"))

    def _differences(self):
        """Options whose saved value differs from this configuration's (``--out`` compared by
        the folder it names, which is this one: a relative or absolute spelling, or a trailing
        slash, changes nothing)."""
        saved = read_json(self.config_path, self.saved_config_text())
        if not isinstance(saved, dict):
            raise DataError(f"{self.config_path}: damaged (a JSON object expected)")
        current = json.loads(self.config.to_json())
        # Options added since the run was written take what such runs did
        # (RunConfig.from_dict): an unfinished run still resumes after an upgrade.
        try:
            saved_config = RunConfig.from_dict(saved)
        except (LungsegError, TypeError, ValueError) as error:
            raise DataError(f"{self.config_path}: not a valid run configuration ({error})") from error
        saved = json.loads(saved_config.to_json())
        return [_difference(key, getattr(saved_config, key), getattr(self.config, key))
                for key in sorted(set(saved) | set(current)) if key != "out" and saved.get(key) != current.get(key)]

    def create(self, overwrite=False, protected=()):
        """Create the run folder, or check that an existing one holds the same configuration.

        An unfinished run with the same configuration is resumed. A finished one, or one with
        another configuration, is replaced only with ``overwrite``, and only when it is a run
        folder (its ``config.json``) that holds none of the ``protected`` paths (the user's
        data): it is moved aside (``replaced_path``) and deleted when the new run finishes
        (``finish``), or put back when the new run fails before saving anything (``abandon``).
        An unfinished replacement (stopped after saving epochs) resumes with the same command.
        """
        self._made = None
        replaced = self.replaced_path()
        if self.root.exists() and not self.root.is_dir():
            raise RunExistsError(f"{self.root} exists and is a file; choose another --name or --out")
        if self.root.exists() and any(self.root.iterdir()):
            if not (self.config_path).is_file():
                raise RunExistsError(
                    f"{self.root} exists and is not a lungseg run folder (no {CONFIG}); "
                    "choose another --name or --out (--overwrite replaces only run folders)"
                )
            differences = self._differences()
            finished = self.is_finished()
            resumable = not differences and not finished
            if overwrite and not (resumable and replaced.exists()):
                self._check_protected(protected)
                if replaced.exists():
                    log(f"--overwrite: removing the unfinished replacement in {self.root}; the run "
                        f"it replaces stays in {replaced} until this one finishes")
                    self.root.unlink() if self.root.is_symlink() else shutil.rmtree(self.root)
                else:
                    log(f"--overwrite: the previous run in {self.root} is kept in {replaced} "
                        "until this one finishes")
                    os.replace(self.root, replaced)
                self._made = "folder"
            elif differences:
                raise RunExistsError(
                    f"{self.root} holds a run with a different configuration "
                    f"({'; '.join(differences)}); give the run's values to resume it, or use "
                    "another --name, or --overwrite to replace it"
                )
            elif finished:
                raise RunExistsError(
                    f"{self.root} holds a finished run; use --overwrite to replace it or another --name"
                )
            else:
                log(f"resuming the unfinished run in {self.root}"
                    + (f" (it replaces the run kept in {replaced})" if replaced.exists() else ""))
        else:
            self._made = "contents" if self.root.is_dir() else "folder"
        self.root.mkdir(parents=True, exist_ok=True)
        text = self.config.to_json()
        if not self.config_path.is_file() or self.saved_config_text() != text:
            write_text(self.config_path, text)
            self._saved_text = text

    def _check_protected(self, protected):
        for path in protected:
            if path not in (None, "none", "imagenet") and is_within(path, self.root):
                raise RunExistsError(
                    f"{self.root}: --overwrite would delete it, and it holds the input {path}; "
                    "choose another --name or --out"
                )

    def finish(self):
        """The run ended well: delete the run an ``--overwrite`` replaced."""
        replaced = self.replaced_path()
        if replaced.is_symlink():  # --out/--name was a link to a run elsewhere: only the link
            replaced.unlink()
        elif replaced.exists():
            shutil.rmtree(replaced)
        else:
            return
        log(f"--overwrite: removed the replaced run {replaced}")

    def abandon(self):
        """The run failed or was stopped: when it saved nothing, remove what ``create`` made and
        put back the run it was replacing, so that nothing blocks the corrected command."""
        made = getattr(self, "_made", None)
        if made and not self.has_progress():
            if made == "folder":
                shutil.rmtree(self.root, ignore_errors=True)
            else:
                for child in self.root.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            replaced = self.replaced_path()
            if (replaced.exists() or replaced.is_symlink()) and not self.root.exists():
                os.replace(replaced, self.root)
                log(f"the previous run is back in {self.root}")
        elif self.replaced_path().exists():
            log(f"the run being replaced stays in {self.replaced_path()} until this one finishes "
                "(the same command resumes it)")

    # --- frames ----------------------------------------------------------------------------

    def check_frames(self, frames):
        """Refuse to resume on changed data: compare ``frames`` (the run's LUS frames as loaded)
        with the digest the run recorded (``frames.json``), naming the frames that changed."""
        path = self.frames_path
        if not path.is_file():
            return
        record = read_json(path)
        saved = record.get("frames") if isinstance(record, dict) else None
        if not isinstance(saved, dict):
            raise DataError(f"{path}: damaged (no frames)")
        current = frame_digest(frames)
        changed = sorted(name for name in saved.keys() & current.keys() if saved[name] != current[name])
        gone, new = sorted(saved.keys() - current.keys()), sorted(current.keys() - saved.keys())
        parts = [f"{label}: {_names(names)}" for label, names in
                 (("changed", changed), ("no longer there", gone), ("new", new)) if names]
        if parts:
            raise DataError(f"{self.root}: the LUS frames differ from those this run trained on "
                            f"({'; '.join(parts)}); restore them, or start a new run (another "
                            "--name, or --overwrite)")

    def record_frames(self, frames):
        """Write ``frames.json`` (once): each frame's name and a hash of its image and mask."""
        if not (self.frames_path).is_file():
            write_json(self.frames_path, {
                "digest": "sha256 of each frame's image and mask as loaded (uint8, model size)",
                "frames": frame_digest(frames),
            })

    # --- locks -----------------------------------------------------------------------------

    def lock_path(self, stage=None):
        """The lock file of this run (or of one stage), beside the run folder."""
        return self.root.parent / f".{self.root.name}{'.' + stage if stage else ''}.lock"

    @contextmanager
    def locked(self, fold=None):
        """Hold this run's locks: a whole run locks the run and every fold; a ``--fold K`` job
        only fold K (and the run while it trains stage 1, see ``stage1_lock``)."""
        with ExitStack() as stack:
            if fold is None:
                stack.enter_context(lock_file(self.lock_path(), self.root))
            for name in [fold_name(fold)] if fold else self.fold_names():
                stack.enter_context(lock_file(self.lock_path(name), self.stage_dir(name)))
            yield

    def stage1_lock(self, fold):
        """The run's lock while a ``--fold`` job trains stage 1 (a whole run holds it already)."""
        return lock_file(self.lock_path(), self.root) if fold else nullcontext()


def absolute_paths(config):
    """``config`` with the user's files named by absolute paths, so that the run folder's
    ``config.json`` still finds them from any working directory (``--out`` stays as given)."""
    import dataclasses

    def absolute(value, must_exist=False):
        if value in (None, "none", "imagenet") or (must_exist and not Path(value).is_file()):
            return value
        return str(Path(value).expanduser().resolve())

    # groups: a CSV file, or a regex kept as it is
    return dataclasses.replace(config, **{name: absolute(getattr(config, name), must_exist=name in GROUP_FIELDS)
                                          for name in PATH_FIELDS})


def frame_digest(frames):
    """{name: sha256 of the frame's image and mask} of a FrameSet (first 16 hex digits)."""
    digest = {}
    for name, image, mask in zip(frames.names, frames.images, frames.masks):
        hashed = hashlib.sha256(image.tobytes())
        hashed.update(mask.tobytes())
        digest[name] = hashed.hexdigest()[:16]
    return digest


def _names(names, at_most=10):
    shown = ", ".join(names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


class RunLockedError(LungsegError):
    """Another process is writing the run folder (or fold)."""


def _lock_text():
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"


def _create_exclusive(path, text):
    """Create ``path`` holding ``text``; False when it exists already."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return True


def _read_lock(path):
    try:
        holder = json.loads(Path(path).read_text())
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


@contextmanager
def lock_file(path, what):
    """Hold the lock file ``path`` (guarding ``what``) while the block runs.

    Another process holding it: ``RunLockedError`` naming its PID and host. A lock left by a
    process that is gone (same host, PID not running) is taken over: under a second lock
    (``<path>.takeover``), so that two processes that find it stale cannot both take it.
    """
    path = Path(path)
    made = not path.parent.exists()  # --out: removed again if nothing else comes into it
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _lock_text()
    for _ in range(5):
        if _create_exclusive(path, text):
            break
        holder = _read_lock(path)
        if holder is None:  # released meanwhile
            continue
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and process_gone(pid):
            takeover = path.with_name(path.name + ".takeover")
            if not _create_exclusive(takeover, text):
                other = _read_lock(takeover) or {}
                if isinstance(other.get("pid"), int) and process_gone(other["pid"]):
                    takeover.unlink(missing_ok=True)
                time.sleep(0.1)
                continue
            try:
                if _read_lock(path) == holder:
                    path.unlink(missing_ok=True)
                    log(f"{what}: took over the lock of process {pid}, which is gone")
            finally:
                takeover.unlink(missing_ok=True)
            continue
        raise RunLockedError(
            f"{what} is in use by process {pid} on {host} (since {holder.get('since', '?')}): "
            f"wait for it to end (if it is gone, delete {path})"
        )
    else:
        raise RunLockedError(f"{what}: could not take the lock {path}")
    try:
        yield
    finally:
        if _read_lock(path) == json.loads(text):
            path.unlink(missing_ok=True)
        if made:
            try:
                path.parent.rmdir()
            except OSError:  # not empty: the run's folders are in it
                pass


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
