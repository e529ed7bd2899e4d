"""Training on several devices or machines: which ``tf.distribute`` strategy runs, and what
several workers need to train one run together.

One GPU or a CPU trains under the default strategy; several GPUs of one machine under
``MirroredStrategy``; a ``TF_CONFIG`` naming a cluster of several workers under
``MultiWorkerMirroredStrategy``, where the chief alone writes the run folder and every other
worker writes a scratch copy of it (``worker_scratch``), removed when it ends.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from lungseg.config import PATH_FIELDS
from lungseg.console import log
from lungseg.errors import ConfigError, LungsegError
from lungseg.runs import RunFolder


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster that ``TF_CONFIG`` names: ``workers`` processes
    train together; the chief (task ``chief``, else ``worker`` 0, as TensorFlow has it) alone
    writes the run folder."""

    workers: int
    task_type: str
    index: int
    has_chief: bool = False

    @property
    def is_chief(self):
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self.has_chief)

    @property
    def label(self):
        return f"{self.task_type} {self.index}"


def cluster_from_tf_config(environ=None):
    """The ``Cluster`` that ``TF_CONFIG`` names, or None: no ``TF_CONFIG``, or one whose cluster
    has a single chief or worker task (then training runs as on one machine)."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        spec = json.loads(text)
        cluster, task = spec.get("cluster") or {}, spec.get("task") or {}
        workers = sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))
    except (ValueError, AttributeError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster specification ({error}): {text[:200]}") from None
    if workers <= 1:
        return None
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker") or not isinstance(index, int):
        raise ConfigError(
            f"TF_CONFIG: this process's task must be a chief or a worker, got {task!r} "
            "(MultiWorkerMirroredStrategy has no parameter servers or evaluators)"
        )
    if not 0 <= index < len(cluster.get(task_type) or []):
        raise ConfigError(f"TF_CONFIG: task {task_type} {index} is not in the cluster {cluster!r}")
    return Cluster(workers, task_type, index, has_chief=bool(cluster.get("chief")))


_MULTI_WORKER = {}  # the one MultiWorkerMirroredStrategy of this process, once made


def distribution_strategy():
    """The strategy training runs under; the one place that decides it.

    ``TF_CONFIG`` naming a cluster of several workers: ``MultiWorkerMirroredStrategy`` (made
    once per process, before any other TensorFlow op, as it must be: ``run_training`` asks
    for it first). Else ``MirroredStrategy`` over all GPUs when there are several, else the
    default strategy.
    """
    if cluster_from_tf_config() is not None:
        if "strategy" not in _MULTI_WORKER:
            _patch_keras_for_multi_worker()
            _MULTI_WORKER["strategy"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER["strategy"]
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _patch_keras_for_multi_worker():
    """Two fixes that let Keras 3's ``fit`` run under ``MultiWorkerMirroredStrategy``.

    Keras 3.15 (``keras/src/backend/tensorflow/trainer.py``) fails there where it reduces
    across workers (tensorflow/tensorflow#72388): ``_maybe_symbolic_build`` takes the MEAN of
    the first ``(x, y)`` batch over replicas only to learn its shapes (the strategy reduces
    one tensor, not a tuple; and workers' batches may differ), and ``reduce_per_replica``
    reduces every scalar log with ``axis=0``. Here the first batch is this worker's own
    (shapes are all that is used), and scalars are reduced with ``axis=None`` (the mean over
    replicas). Everything else, and every other strategy, goes to Keras' own code.
    """
    try:
        from keras import tree
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        return
    multi_worker = getattr(trainer, "_collective_all_reduce_multi_worker", None)
    if multi_worker is None or getattr(trainer, "_lungseg_patched", False):
        return
    reduce_per_replica = trainer.reduce_per_replica
    symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_scalars_too(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values
            )
        return reduce_per_replica(values, strategy, reduction)

    def local_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not multi_worker(strategy):
            return symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                next(it),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_scalars_too
    trainer.TensorFlowTrainer._maybe_symbolic_build = local_symbolic_build
    trainer._lungseg_patched = True


def replica_share(loss, replicas):
    """``loss`` as Keras expects it of each of ``replicas`` model copies: divided by their number.

    Keras divides a loss by the replicas, so that summing their gradients averages them,
    and multiplies it back for the log, except a loss that is already one number per batch,
    as ours are (Dice over the flattened batch): that one it leaves whole (Keras 3.15,
    ``losses/loss.py`` ``reduce_values``), so the gradients were summed and the logged
    ``loss`` and ``val_loss`` came out ``replicas`` times the true values. Each replica's
    loss is that of its share of the global batch; the log shows their mean.
    """
    if replicas <= 1:
        return loss

    def share(y_true, y_pred):
        return loss(y_true, y_pred) / replicas

    share.__name__ = loss.__name__
    return share


def shard_by_data(dataset):
    """Under several workers each one runs the whole input pipeline (same seed, same order,
    same augmentation) and keeps its share of every global batch: ``DATA`` auto-sharding, said
    outright (frames in memory have no files to shard by, which ``AUTO`` would try first)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def digest(*parts):
    """A 62-bit number from the SHA-256 of ``parts`` (strings, bytes or arrays)."""
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        sha.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
        sha.update(b"\0")
    return int.from_bytes(sha.digest()[:8], "big") >> 2


PATH_OPTIONS = (*PATH_FIELDS, "out")  # may differ between machines


def check_workers_agree(strategy, label, stage_name, items):
    """Under several workers: check that every one starts ``stage_name`` alike, else raise.

    ``items`` maps what is compared to a whole number (a digest, or the epoch a stage resumes
    after); every worker gathers them from all the others, so all of them find the same
    difference and stop together. Workers that differ would train apart in silence, or wait
    forever on each other: a run resumed where a worker cannot see the chief's run folder, a
    different command, other data, another precision chosen by ``auto`` on another CPU.
    """
    local = tf.constant([[int(value) for value in items.values()]], dtype=tf.int64)
    gathered = strategy.gather(strategy.experimental_distribute_values_from_function(lambda _: local), axis=0)
    rows = gathered.numpy().tolist()
    differ = [name for column, name in enumerate(items) if len({row[column] for row in rows}) > 1]
    if not differ:
        return
    shown = ""
    if "resume epoch" in differ:
        column = list(items).index("resume epoch")
        shown = f" (resume epochs {', '.join(str(e) for e in sorted({row[column] for row in rows}))})"
    raise LungsegError(
        f"[{label}] the workers do not start {stage_name} alike: {', '.join(differ)} "
        f"differ{'s' if len(differ) == 1 else ''}{shown}. "
        "Every worker must run the same command on the same data, and see the chief's run "
        "folder when a run resumes: keep --out on a filesystem all workers share"
    )


def stage_start(stage_name, initial_epoch, train, val, config):
    """What all workers must agree on before a stage starts: the stage, the epoch it resumes
    after, the options (paths aside: each machine may mount the data elsewhere), the frames."""
    options = {k: v for k, v in json.loads(config.to_json()).items() if k not in PATH_OPTIONS}
    frames = [part for frames in (train, val) for part in ("\n".join(frames.names), frames.images, frames.masks)]
    return {
        "stage": digest(stage_name),
        "resume epoch": initial_epoch,
        "options": digest(json.dumps(options, sort_keys=True)),
        "frames": digest(*frames),
    }


@contextlib.contextmanager
def lost_worker_as_error():
    """A worker that stops (killed, crashed, its machine gone) makes the others' next step
    fail once TensorFlow notices its missing heartbeats: one line, and how to go on."""
    try:
        yield
    except tf.errors.UnavailableError as error:
        text = str(error)
        tasks = sorted(set(re.findall(r"^(/job:\w+/replica:\d+/task:\d+)\s*$", text, re.MULTILINE)))
        if tasks and "unhealthy" in text:
            why = f"{', '.join(tasks)} stopped sending heartbeats"
        else:
            why = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.splitlines()[0] if text else "")[:300]
        raise LungsegError(
            f"a worker of the cluster stopped ({why or type(error).__name__}); run the same "
            "command on every machine again to resume after the last finished epoch"
        ) from error


@contextlib.contextmanager
def worker_scratch(config, cluster, overwrite=False):
    """A non-chief worker's run folder: a scratch folder in the system's temporary folder
    (``TMPDIR``), holding a copy of the chief's run folder to resume from (none with
    ``overwrite``), removed when the worker ends, on an error or SIGTERM too.

    Its name is fixed by the task and the chief's run folder, so the scratch a killed worker
    left is removed when it starts again. Generated data sets go beside the copy, in it.
    """
    chief = RunFolder.for_config(config)
    key = hashlib.sha256(str(chief.root.resolve()).encode()).hexdigest()[:10]
    scratch = Path(tempfile.gettempdir()) / f"lungseg-{cluster.task_type}{cluster.index}-{chief.label}-{key}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    try:
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    except ValueError:  # not the main thread: no handler of ours
        previous = None
    try:
        root = scratch / chief.label
        if not overwrite:
            chief.copy_to(root)
        log(f"{cluster.label} of {cluster.workers} workers: the chief writes the run folder "
            f"{chief.root}; this worker writes a copy in {scratch}, removed at the end")
        yield root
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)
