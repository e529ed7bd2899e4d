"""The run folder: the one place that knows its layout, its files and the frames a run used.

Training writes a run folder, evaluation, prediction and the figures read it; nothing else
builds a path inside one. A run folder is self-contained: paths in its ``config.json`` are
absolute (the user's data) and generated data is found beside it or made again from its
recorded size and seed, so a copied or moved run folder opened from any working directory
evaluates and predicts as it did in place::

    config.json   splits.json   summary.json   train.log
    stage1/ or pretrain/   model.keras (best by val_loss)  history.csv  metrics.json
    fold_1/ ... fold_k/    the same
"""

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from lungseg.config import PATH_FIELDS, RunConfig
from lungseg.console import log
from lungseg.errors import DataError, LungsegError, RunExistsError
from lungseg.files import read_json, write_json, write_text

CONFIG = "config.json"
SPLITS = "splits.json"
SUMMARY = "summary.json"
LOG = "train.log"
MODEL = "model.keras"
HISTORY = "history.csv"
METRICS = "metrics.json"
SYNTHETIC = "_synthetic"  # generated data sets, beside the run folders that use them
MODEL_NAMES = {"vunet": "V-Unet", "xunet": "X-Unet"}


def stage1_name(model):
    """The first stage's folder: V-Unet's decoder stage or X-Unet's pre-training."""
    return "pretrain" if model == "xunet" else "stage1"


def fold_name(k):
    return f"fold_{k}"


def display_name(model, encoder_weights_used=None):
    """``V-Unet``, ``X-Unet``, or ``V-Unet (random encoder)`` when the VGG16 was not loaded."""
    name = MODEL_NAMES.get(model, "model")
    if model == "vunet" and (encoder_weights_used or {}).get("weights") == "random":
        name += " (random encoder)"
    return name


class RunFolder:
    """A run folder on disk and its configuration."""

    def __init__(self, root, config: RunConfig):
        self.root = Path(root)
        self.config = config
        self.stage1 = stage1_name(config.model)

    @classmethod
    def for_config(cls, config):
        """Where training writes the run of ``config``: ``--out/--name``."""
        return cls(Path(config.out) / config.name, config)

    @classmethod
    def open(cls, path):
        """An existing run folder; ``DataError`` when ``path`` is not one."""
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise DataError(
                f"{path}: not a run folder (no {CONFIG}); train one with train_vunet.py or train_xunet.py"
            )
        return cls(path, RunConfig.from_dict(read_json(path / CONFIG)))

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

    def stages(self):
        """Every stage of the protocol in order (stage 1 only when it is trained here)."""
        first = [] if self.config.pretrained else [self.stage1]
        return first + self.fold_names()

    def model_path(self, stage):
        return self.stage_dir(stage) / MODEL

    def history_path(self, stage):
        return self.stage_dir(stage) / HISTORY

    def is_done(self, stage):
        return (self.stage_dir(stage) / METRICS).is_file()

    def finished_folds(self):
        """Names of the folds whose model and metrics are written."""
        return [f for f in self.fold_names() if self.is_done(f) and self.model_path(f).is_file()]

    def is_finished(self):
        return (self.root / SUMMARY).is_file() and self.read_summary().get("complete", False)

    # --- files ---------------------------------------------------------------------------

    def read_metrics(self, stage):
        return read_json(self.stage_dir(stage) / METRICS) if self.is_done(stage) else None

    def write_metrics(self, stage, metrics):
        write_json(self.stage_dir(stage) / METRICS, metrics)

    def read_splits(self):
        from lungseg.data.splits import read_splits

        return read_splits(self.root / SPLITS)

    def write_splits(self, splits):
        write_json(self.root / SPLITS, splits)

    def has_splits(self):
        return (self.root / SPLITS).is_file()

    def saved_precision(self, overwrite=False):
        """The precision an unfinished run of this folder chose (``auto`` keeps it on resume)."""
        if overwrite or not (self.root / CONFIG).is_file():
            return None
        return read_json(self.root / CONFIG).get("precision")

    def read_summary(self):
        return read_json(self.root / SUMMARY) if (self.root / SUMMARY).is_file() else None

    def write_summary(self, summary):
        write_json(self.root / SUMMARY, summary)

    @contextmanager
    def logging(self):
        """Copy what the run prints into ``train.log`` (appended on resume)."""
        from lungseg.console import log_to

        with log_to(self.root / LOG):
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
                if relative == Path(LOG) or any(part.startswith(".tmp-") for part in relative.parts):
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

    def create(self, overwrite=False):
        """Create the run folder, or check that an existing one holds the same configuration.

        A finished run is only replaced with ``overwrite``; an unfinished one with the same
        configuration is resumed.
        """
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite:
                log(f"--overwrite: removing the previous run in {self.root}")
                shutil.rmtree(self.root)
            elif not (self.root / CONFIG).exists():
                raise RunExistsError(
                    f"{self.root} exists and is not a lungseg run folder; choose another --name or --out"
                )
            else:
                saved = read_json(self.root / CONFIG)
                current = json.loads(self.config.to_json())
                # Options added since the run was written take their defaults, which are what
                # such runs did: an unfinished run still resumes after an upgrade.
                saved = {key: current[key] for key in set(current) - set(saved)
                         if current[key] == getattr(RunConfig, key, None)} | saved
                differences = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
                if differences:
                    raise RunExistsError(
                        f"{self.root} holds a run with a different configuration "
                        f"({', '.join(differences)}); use another --name, or --overwrite to replace it"
                    )
                if self.is_finished():
                    raise RunExistsError(
                        f"{self.root} holds a finished run; use --overwrite to replace it or another --name"
                    )
                log(f"resuming the unfinished run in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(self.root / CONFIG, self.config.to_json())

    # --- data ----------------------------------------------------------------------------

    def lus_frames(self, keep_generated=False, native=False):
        """The run's LUS frames (its training pool) as its training loaded them, and the
        sentence saying which rule chose them; ``native`` keeps each mask at its own size too."""
        from lungseg.data import select_lus_frames

        config = self.config
        frames = self._load_lus(keep_generated, native)
        return select_lus_frames(frames, config.lus_frames, flips=config.flips)

    def all_lus_frames(self, native=False):
        """Every frame of the run's LUS data and its mirror image (a test list may name any)."""
        return self._load_lus(False, native).with_flips()

    def _load_lus(self, keep_generated, native=False):
        from lungseg.data import find_pairs, load_frames
        from lungseg.data.frames import Reading

        config = self.config
        with self._data_folder("lus", config.data, lus_pool_size(config), keep_generated) as root:
            pairs = find_pairs(root, groups=config.groups, target=getattr(config, "target", None))
            return load_frames(pairs, config.image_size, config.interpolation, progress=True,
                               native=native, reading=Reading.of(config))

    def salient_frames(self, keep_generated=False):
        """The salient-object frames of X-Unet's pre-training."""
        from lungseg.data import find_pairs, load_frames

        config = self.config
        with self._data_folder("salient", config.salient, config.synthetic_salient, keep_generated) as root:
            pairs = find_pairs(root, groups=config.groups if config.salient else None,
                               warn_groups=False)
            return load_frames(pairs, config.image_size, config.interpolation, progress=True)

    @contextmanager
    def _data_folder(self, kind, given, n, keep_generated):
        """The user's folder, or the generated set beside the run folder.

        Training (``keep_generated``) makes the set there once for all its runs; a copied run
        folder evaluated elsewhere, with no set beside it, makes it again in a temporary
        folder that is removed afterwards, so nothing is written outside its output.
        """
        if given:
            log(f"{kind} frames from {given}")
            yield Path(given)
            return
        from lungseg.data.synthetic import ensure_dataset, is_generated_set

        seed = self.config.seed
        cache = self.root.parent / SYNTHETIC / f"{kind}_{n}_seed{seed}"
        if keep_generated or is_generated_set(cache, kind, n, seed):
            log(f"no {kind} data given: using {n} generated frames (seed {seed}) in {cache}")
            yield ensure_dataset(kind, cache, n=n, seed=seed)
            return
        log(f"no {kind} data given and no generated set beside {self.root}: "
            f"generating its {n} frames (seed {seed}) again in a temporary folder")
        with tempfile.TemporaryDirectory(prefix="lungseg-") as scratch:
            yield ensure_dataset(kind, Path(scratch) / kind, n=n, seed=seed)


def absolute_paths(config):
    """``config`` with the user's files named by absolute paths, so that the run folder's
    ``config.json`` still finds them from any working directory (``--out`` stays as given)."""
    import dataclasses

    def absolute(value, must_exist=False):
        if value in (None, "none", "imagenet") or (must_exist and not Path(value).is_file()):
            return value
        return str(Path(value).expanduser().resolve())

    # groups: a CSV file, or a regex kept as it is
    return dataclasses.replace(
        config, **{name: absolute(getattr(config, name), must_exist=name == "groups") for name in PATH_FIELDS}
    )


def lus_pool_size(config):
    """How many phantom frames to generate: the preset's number, or enough for the set asked."""
    from lungseg.data.synthetic import lus_phantoms_needed

    originals = config.lus_frames // 2 if config.flips else config.lus_frames
    return max(config.synthetic_lus, lus_phantoms_needed(originals))


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment(strategy=None, precision=None, workers=1):
    """Versions, devices, threads and CPU features of this process, for the run's record.

    ``workers``: the processes training together (several under ``MultiWorkerMirroredStrategy``;
    the devices listed are this process's), ``replicas`` the model copies over all of them.

    Results can differ between machines of one kind: oneDNN picks kernels by CPU features
    (AVX-512, BF16, AMX) and thread count, which changes float rounding and so training.
    """
    import keras
    import numpy
    import tensorflow as tf

    import lungseg

    devices = tf.config.list_logical_devices()
    cpu = _cpu_info()
    return {
        "versions": {
            "lungseg": lungseg.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "devices": [{"kind": d.device_type, "name": d.name} for d in devices],
        "device_count": {kind: sum(d.device_type == kind for d in devices) for kind in sorted({d.device_type for d in devices})},
        "cpu": cpu,
        "threads": {
            "cpus": os.cpu_count(),
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "strategy": _strategy_name(strategy),
        "workers": workers,
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "precision": precision,
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),  # float32 matmuls in TF32
        "platform": platform.platform(),
    }


def _strategy_name(strategy):
    """The strategy's public name (``MultiWorkerMirroredStrategy``'s class is called
    ``CollectiveAllReduceStrategy``)."""
    if strategy is None:
        return None
    name = type(strategy).__name__
    return {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(name, name)


def _cpu_info():
    """The CPU's model name and the features that change oneDNN's kernels (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or None, "features": []}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"model": model, "features": [flag for flag in wanted if flag in flags]}
