"""Staged training of the paper's protocols, into a run folder that can be resumed.

Stage 1 is V-Unet's decoder-only training (encoder frozen) or X-Unet's pre-training on
salient objects; stage 2 fine-tunes a copy of the stage-1 model on each of k folds of LUS
frames. Every epoch leaves a complete state on disk (written under a temporary name, then
renamed), so running the same command again after a crash resumes at the last finished epoch.
The run folder's layout belongs to ``lungseg.runs``; the end-of-stage scores come from
``lungseg.scoring``, the same function ``evaluate.py`` uses.
"""

import contextlib
import csv
import dataclasses
import math
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from lungseg import data, transfer
from lungseg.cli import stop_if_terminated
from lungseg.config import GROUP_FIELDS, PATH_FIELDS, RunConfig
from lungseg.console import interactive, log, warn
from lungseg.distribute import (
    check_workers_agree,
    cluster_from_tf_config,
    digest,
    distribution_strategy,
    lost_worker_as_error,
    replica_share,
    shard_by_data,
    stage_start,
    worker_scratch,
)
from lungseg.errors import ConfigError, LungsegError, WeightsUnavailableError
from lungseg.evaluation import aggregate_folds
from lungseg.files import atomic_path, is_within, read_json, write_json, write_text
from lungseg.losses import EmptyOnRibs, FullPredictions, dice_coef, iou, training_loss
from lungseg.models import build_vunet, build_xunet, freeze, inference_copy, part_layers, unfreeze, with_policy
from lungseg.precision import choose_precision
from lungseg.model_files import load_model  # the one safe loader (safe mode, checked input)
from lungseg.data import run_frames
from lungseg.data.run_frames import lus_pool_size
from lungseg.machine import environment
from lungseg.runs import RunFolder, absolute_paths, display_name, file_sha256, run_folder_around
from lungseg.scoring import METRIC_DEFINITIONS, score_frames, stage_dice_batch

# A stage has collapsed when more than this share of validation frames that contain ribs get
# an empty (or all-foreground) prediction.
COLLAPSE_SHARE = 0.5
# Epochs running with collapsed validation predictions and no progress in validation loss (an
# improvement under COLLAPSE_MIN_DELTA on the best before) before training says so (and, with
# --stop-on-collapse, ends the stage). A stage learning a thin target with cross-entropy
# predicts nothing above 0.5 for its first epochs while its loss falls: not a collapse.
COLLAPSE_EPOCHS = 3
COLLAPSE_MIN_DELTA = 1e-3
METRICS = tuple(METRIC_DEFINITIONS)
# Phantom frames a run may generate when no --data is given (the paper's sets: 300 at most).
MAX_GENERATED = 20_000


class EpochCheckpoint(keras.callbacks.Callback):
    """Keeps the best model by ``val_loss`` and a resumable training state, both atomic.

    Plays the part of ``ModelCheckpoint(save_best_only=True)`` plus ``BackupAndRestore``, but a
    kill at any instant leaves either the previous or the new complete files: weights go to a
    new per-epoch file first, then ``state.json`` (renamed into place) points to it.
    """

    def __init__(self, run, stage):
        super().__init__()
        self.state_dir = run.state_dir(stage)
        self.state_path = run.state_path(stage)
        self.best_path = run.model_path(stage)
        self.history_path = run.history_path(stage)
        self.best_val_loss = math.inf
        self.best_epoch = None
        self.saved_model = None  # the float32 copy saved as model.keras, reused epoch to epoch

    def saved_epoch(self):
        """The epoch the saved state holds (0: none), which ``restore`` will resume after."""
        return read_json(self.state_path)["epoch"] if self.state_path.exists() else 0

    def restore(self, model):
        """Load the saved state into ``model`` (compiled, its optimizer built); return the epoch
        to start from."""
        if not self.state_path.exists():
            # Nothing finished in this stage yet: drop leftovers of a run killed in epoch 1.
            for stale in (self.best_path, self.history_path):
                stale.unlink(missing_ok=True)
            return 0
        state = read_json(self.state_path)
        model.load_weights(self.state_dir / state["weights"])
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self._truncate_history(state["epoch"])
        return state["epoch"]

    def _truncate_history(self, epochs):
        """Keep the CSV header and the rows of the epochs the state holds."""
        if not self.history_path.exists():
            return
        lines = self.history_path.read_text().splitlines(keepends=True)
        write_text(self.history_path, "".join(lines[: epochs + 1]))

    def on_epoch_end(self, epoch, logs=None):
        val_loss = (logs or {}).get("val_loss", math.nan)
        if math.isfinite(val_loss) and val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch = float(val_loss), epoch + 1
            # Float32 and uncompiled whatever the training policy: inference is not changed or
            # slowed by it, and the file holds no optimizer state (the resume state does).
            self.saved_model = inference_copy(self.model, into=self.saved_model)
            with atomic_path(self.best_path) as tmp:
                self.saved_model.save(tmp)
        weights = f"epoch_{epoch + 1}.weights.h5"
        with atomic_path(self.state_dir / weights) as tmp:
            self.model.save_weights(tmp)
        write_json(
            self.state_path,
            {
                "epoch": epoch + 1,
                "weights": weights,
                "best_val_loss": self.best_val_loss,
                "best_epoch": self.best_epoch,
            },
        )
        for old in self.state_dir.glob("epoch_*.weights.h5"):
            if old.name != weights:
                old.unlink()

    def clear(self):
        shutil.rmtree(self.state_dir, ignore_errors=True)


class EpochLog(keras.callbacks.Callback):
    """One line per epoch in the log (and on screen when Keras draws no live bar), and the
    epoch's wall time as ``seconds`` in the logs, so that ``history.csv`` records it."""

    def __init__(self, label, epochs):
        super().__init__()
        self.label, self.epochs = label, epochs
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["seconds"] = round(time.perf_counter() - self.started, 3)
        values = "  ".join(f"{key} {value:.4f}" for key, value in logs.items() if key != "seconds")
        log(f"[{self.label}] epoch {epoch + 1}/{self.epochs}: {values}  ({logs['seconds']:.1f} s)",
            console=not interactive())


def collapse_message(metrics):
    """Words for a collapsed stage, or None."""
    if metrics["empty_on_ribs"] > COLLAPSE_SHARE:
        empty = metrics.get("empty_predictions")  # not counted during training
        return (
            f"collapsed to all background: {metrics['empty_on_ribs']:.0%} of validation frames "
            "with ribs got an empty prediction"
            + (f" ({empty:.0%} of all predictions are empty)" if empty is not None else "")
        )
    if metrics["full_predictions"] > COLLAPSE_SHARE:
        return (
            f"collapsed to all foreground: {metrics['full_predictions']:.0%} of validation "
            "predictions cover the whole frame"
        )
    return None


class CollapseWatch(keras.callbacks.Callback):
    """Notices a collapse while it happens, from the validation ``empty_on_ribs`` and
    ``full_predictions`` that ``EmptyOnRibs`` and ``FullPredictions`` count each epoch, and the
    validation loss.

    After ``COLLAPSE_EPOCHS`` epochs running whose predictions ``collapse_message`` calls
    collapsed while the validation loss did not improve on its best by ``COLLAPSE_MIN_DELTA``,
    the log says so at once; with ``stop`` the stage ends there. ``history`` holds the rows
    of epochs already run (a resumed stage), whose streak counts on.
    """

    def __init__(self, label, stop=False, history=()):
        super().__init__()
        self.label, self.stop = label, stop
        self.streak, self.noticed, self.stopped = 0, None, False
        self.best_loss = math.inf
        for epoch, row in enumerate(history):
            self._update(epoch, row, resumed=True)

    @staticmethod
    def _message(logs):
        values = {key: _number(logs.get(f"val_{key}")) for key in ("empty_on_ribs", "full_predictions")}
        if any(value is None for value in values.values()):
            return None
        return collapse_message(values)

    def on_epoch_end(self, epoch, logs=None):
        self._update(epoch, logs or {})
        if self.stopped:
            self.model.stop_training = True

    def _update(self, epoch, logs, resumed=False):
        message = self._message(logs)
        loss = _number(logs.get("val_loss"))
        # The first epoch has nothing to improve on: it counts as no progress.
        progress = loss is not None and loss < self.best_loss - COLLAPSE_MIN_DELTA < math.inf
        if loss is not None:
            self.best_loss = min(self.best_loss, loss)
        self.streak = self.streak + 1 if message and not progress else 0
        if self.streak < COLLAPSE_EPOCHS or self.noticed:
            return
        self.noticed = {"epoch": epoch + 1, "message": f"{message}, with no progress in validation "
                        f"loss, {self.streak} epochs running"}
        self.stopped = self.stop
        if resumed:
            return
        if self.stop:
            warn(f"[{self.label}] epoch {epoch + 1}: {self.noticed['message']}; "
                 "stopping the stage (--stop-on-collapse)")
        else:
            warn(f"[{self.label}] epoch {epoch + 1}: {self.noticed['message']} "
                 "(--stop-on-collapse would end the stage here)")


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _history_rows(path):
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def train_stage(label, run, stage_name, make_model, train, val, stage, config, frozen=(), augment=True,
                steps_per_epoch=None, record=None):
    """Train one stage (or resume it), score its best model and write its metrics; return them.

    ``make_model`` builds or loads the starting model; ``frozen`` lists the parts or layer
    names that stay frozen; ``steps_per_epoch`` (None: one pass) repeats the training frames;
    ``record`` is merged into the metrics (what the stage started from). The best model by
    ``val_loss`` is kept as ``model.keras``.
    """
    run.stage_dir(stage_name).mkdir(parents=True, exist_ok=True)
    checkpoint = EpochCheckpoint(run, stage_name)
    strategy = distribution_strategy()
    several_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if several_workers:  # first, while every worker has made the same collective calls
        check_workers_agree(strategy, label, stage_name,
                            stage_start(stage_name, checkpoint.saved_epoch(), train, val, config))
    model, counts, initial_epoch = _compiled_model(strategy, make_model, frozen, stage, config, checkpoint)
    if several_workers:
        weights = [variable.numpy() for variable in [*model.weights, *model.optimizer.variables]]
        check_workers_agree(strategy, label, stage_name, {"starting weights": digest(*weights)})
    _log_stage_start(label, counts, train, val, stage, config, augment, steps_per_epoch, initial_epoch)
    train_ds, val_ds = _stage_datasets(model, train, val, stage, config, augment, steps_per_epoch,
                                       initial_epoch, shard=several_workers)
    watch = CollapseWatch(label, config.stop_on_collapse, _history_rows(checkpoint.history_path))
    if initial_epoch < stage.epochs and not watch.stopped:
        _fit(model, train_ds, val_ds, label, stage, initial_epoch, steps_per_epoch, checkpoint, watch)
    stage_facts = {"epochs": stage.epochs, "steps_per_epoch": steps_per_epoch, "training_frames": len(train),
                   "trainable_parameters": counts[0], "frozen_parameters": counts[1]}
    metrics = _score_stage(label, stage_name, checkpoint, watch, val, stage_facts) | (record or {})
    run.write_metrics(stage_name, metrics)
    checkpoint.clear()
    _log_stage_end(label, metrics, watch, stage)
    return metrics


def _compiled_model(strategy, make_model, frozen, stage, config, checkpoint):
    """The stage's starting model, frozen as asked and compiled, with its resume state loaded:
    ``(model, (trainable, frozen) parameter counts, the epoch to start from)``."""
    with strategy.scope():
        model = make_model()
        unfreeze(model)
        counts = freeze(model, list(frozen))
        model.compile(
            optimizer=keras.optimizers.Adam(stage.learning_rate),
            loss=replica_share(training_loss(config.loss, config.bce_weight), strategy.num_replicas_in_sync),
            metrics=[dice_coef, iou, "binary_accuracy", EmptyOnRibs(), FullPredictions()],
            jit_compile=config.jit_compile,
        )
        # Built here, not on the first step inside the traced train function, where each of its
        # slots is created behind a conditional initialiser: that tracing took a third of a
        # small training's CPU. Inside the scope, so that the slots are mirrored too.
        model.optimizer.build(model.trainable_variables)
        initial_epoch = checkpoint.restore(model)
    return model, counts, initial_epoch


def _log_stage_start(label, counts, train, val, stage, config, augment, steps_per_epoch, initial_epoch):
    steps = f"{steps_per_epoch} steps per epoch" if steps_per_epoch else "one pass per epoch"
    log(
        f"[{label}] {counts[0]:,} trainable and {counts[1]:,} frozen parameters; "
        f"{len(train)} training and {len(val)} validation frames; {stage.epochs} epochs "
        f"({steps}), batch {stage.batch_size}, Adam {stage.learning_rate:g}"
        + (f", loss {config.loss}" if config.loss != "dice" else "")
        + (f" (cross-entropy x {config.bce_weight:g})" if config.bce_weight != 1 else "")
        + (f", augmented ({config.augment_policy + ', ' if config.augment_policy != 'paper' else ''}"
           f"{config.augment_interpolation} resampling)" if augment else "")
    )
    if initial_epoch:
        log(f"[{label}] resuming after epoch {initial_epoch} of {stage.epochs}")


def _stage_datasets(model, train, val, stage, config, augment, steps_per_epoch, initial_epoch, shard):
    """The stage's training and validation batches (the training ones seeded by the epoch it
    starts from, repeated when ``steps_per_epoch`` is set; sharded by data across workers)."""
    channels = model.input_shape[-1]
    augmentation = (
        data.make_augmentation(config.augment_policy, config.augment_interpolation) if augment else None
    )
    train_ds = data.make_dataset(
        train, stage.batch_size, channels=channels, training=True, augment=augmentation,
        seed=config.seed + initial_epoch,
    )
    if steps_per_epoch:
        train_ds = train_ds.repeat()
    val_ds = data.make_dataset(val, stage.batch_size, channels=channels)
    if shard:
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
    return train_ds, val_ds


def _fit(model, train_ds, val_ds, label, stage, initial_epoch, steps_per_epoch, checkpoint, watch):
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=stage.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=[
            EpochLog(label, stage.epochs),  # first, so that CSVLogger writes its "seconds"
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.CSVLogger(str(checkpoint.history_path), append=True),
            checkpoint,
            watch,  # after the checkpoint: the epoch that stops the stage is saved
            keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stop_if_terminated()),
        ],
        shuffle=False,  # the data set shuffles itself, seeded
        verbose=1 if interactive() else 0,
    )


def _score_stage(label, stage_name, checkpoint, watch, val, stage_facts):
    """The metrics of the stage's best model on its validation frames (``lungseg.scoring``, as
    evaluation scores), then ``stage_facts`` and what its training did."""
    if not checkpoint.best_path.exists():
        raise LungsegError(
            f"[{label}] training produced no finite validation loss (NaN); "
            "try a lower --lr or check the data"
        )
    started = time.perf_counter()
    metrics = score_frames(load_model(checkpoint.best_path), val, dice_batch=stage_dice_batch(stage_name)).metrics
    metrics.update(
        best_epoch=checkpoint.best_epoch,
        val_loss=checkpoint.best_val_loss,
        **stage_facts,
        collapse=collapse_message(metrics),
        collapse_noticed=watch.noticed,
        stopped_on_collapse=watch.stopped,
        epochs_run=len(_history_rows(checkpoint.history_path)),
        train_seconds=_history_seconds(checkpoint.history_path),
        scoring_seconds=round(time.perf_counter() - started, 3),
    )
    return metrics


def _log_stage_end(label, metrics, watch, stage):
    log(
        f"[{label}] best epoch {metrics['best_epoch']}: validation Dice {metrics['dice']:.4f} "
        f"(global {metrics['dice_global']:.4f}, per image {metrics['dice_per_image']:.4f}), "
        f"IoU {metrics['iou']:.4f}, accuracy {metrics['binary_accuracy']:.4f}; "
        f"{metrics['train_seconds']:.0f} s of training"
    )
    if metrics["collapse"]:
        warn(f"[{label}] {metrics['collapse']}")
    if watch.stopped:
        warn(f"[{label}] stopped after epoch {watch.noticed['epoch']} of {stage.epochs}: "
             f"{watch.noticed['message']}")


def _history_seconds(path):
    """Total of the ``seconds`` column of a stage's history.csv (resumed epochs included)."""
    with open(path, newline="") as handle:
        return round(sum(_number(row.get("seconds")) or 0 for row in csv.DictReader(handle)), 3)


def plan_splits(config, stage1_name, lus, stage1_frames, selection):
    """Stage-1 hold-out and k folds of a new run (computed before the run folder is written,
    so that too many grouped folds for the groups is refused first)."""
    splits = {"mode": config.split, "seed": config.seed, "selection": selection, "lus_frames": lus.names}
    if stage1_frames is not None:  # V-Unet's stage 1 holds out LUS frames, X-Unet's pre-training set
        mode = config.split if config.model == "vunet" else config.salient_split
        splits[stage1_name] = data.holdout_split(
            stage1_frames.names, stage1_frames.groups, config.validation_fraction,
            mode=mode, seed=config.seed,
        )
    splits["folds"] = data.kfold_splits(lus.names, lus.groups, config.folds, mode=config.split, seed=config.seed)
    return splits


def make_splits(run, planned):
    """The run's splits: read back from splits.json when the run resumes, else ``planned``."""
    if run.has_splits():
        return run.read_splits()
    run.write_splits(planned)
    return planned


def build_stage1_model(config):
    """The first stage's model, and a record of the encoder weights it really holds.

    V-Unet's record is ``{"weights": "imagenet"}``, ``{"weights": "file", "path", "sha256"}``,
    ``{"weights": "run", ...}`` (another V-Unet's encoder, ``lungseg.transfer.encoder_from_run``)
    or ``{"weights": "random", "reason"}``; falling back to random weights when ImageNet's
    cannot be had is allowed only where the config says so (the quick preset). X-Unet: None.
    """
    shape = (*config.image_size, 1)
    if config.model == "xunet":
        return build_xunet(shape, initializer=config.initializer), None
    weights = config.encoder_weights
    if weights in (None, "none"):
        used = {"weights": "random", "reason": "asked for (--encoder-weights none)"}
        return build_vunet(shape, encoder_weights=None, initializer=config.initializer), used
    if transfer.is_run_model(weights):
        model = build_vunet(shape, encoder_weights=None, initializer=config.initializer)
        return model, transfer.encoder_from_run(weights, model)
    try:
        model = build_vunet(shape, encoder_weights=weights, initializer=config.initializer)
    except WeightsUnavailableError as error:
        if not config.fallback_to_random_weights:
            raise
        warn(f"{error}\ncontinuing with a randomly initialised VGG16 encoder")
        reason = (f"ImageNet weights unavailable ({str(error).splitlines()[0]}); "
                  f"the {config.preset} preset falls back to random weights")
        used = {"weights": "random", "reason": reason}
        return build_vunet(shape, encoder_weights=None, initializer=config.initializer), used
    if weights == "imagenet":
        return model, {"weights": "imagenet"}
    return model, {"weights": "file", "path": str(weights), "sha256": file_sha256(weights)}


def check_freeze(config):
    """Check the --freeze names on a tiny model now, not after hours of stage 1."""
    if config.model == "xunet":
        probe = build_xunet((16, 16, 1))
    else:
        probe = build_vunet((16, 16, 1), encoder_weights=None)
    part_layers(probe, config.freeze)


def load_model_for_finetuning(path, config):
    """The stage-1 (or ``--pretrained``) model to fine-tune, checked against ``--image-size``
    and set to compute in the run's precision."""
    model = load_model(path)
    expected = (*config.image_size, 1)
    if tuple(model.input_shape[1:]) != expected:
        raise ConfigError(
            f"{path}: model takes {model.input_shape[1]}x{model.input_shape[2]} frames, "
            f"but --image-size is {config.image_size[0]}x{config.image_size[1]}"
        )
    return with_policy(model, config.precision)  # saved float32: computes as the run does


def run_training(config: RunConfig, fold=None, overwrite=False):
    """Run (or resume) the whole protocol of ``config``; return the summary dict.

    Under a ``TF_CONFIG`` cluster of several workers every worker runs this with the same
    options: the chief writes the run folder, each other worker a scratch copy of it
    (``worker_scratch``), and all of them train every stage together.
    """
    config = absolute_paths(config).validate()
    if fold is not None and not 1 <= fold <= config.folds:
        raise ConfigError(f"--fold must be between 1 and --folds ({config.folds}), got {fold}")
    run = RunFolder.for_config(config)  # checks --name
    if not config.data and lus_pool_size(config) > MAX_GENERATED:
        raise ConfigError(f"--lus-frames {config.lus_frames} without --data would generate "
                          f"{lus_pool_size(config):,} phantom frames (at most {MAX_GENERATED:,}); "
                          "give --data or fewer --lus-frames")
    for option, given in (("--data", config.data), ("--salient", config.salient)):
        if given and is_within(run.root.parent, given):
            raise ConfigError(f"{config.out}: --out is {option} {given} or inside it; runs and "
                              "generated data would be written among the user's frames")
    inside = run_folder_around(run.root.parent)
    if inside is not None:
        raise ConfigError(f"{config.out}: --out is the run folder {inside} or inside it; give the "
                          "folder that holds run folders")
    cluster = cluster_from_tf_config()
    if cluster is None:
        with run.locked(fold):
            return _run_training(config, run.root, cluster, fold, overwrite)
    with lost_worker_as_error(), contextlib.ExitStack() as stack:
        if cluster.is_chief:  # the chief alone writes the run folder, and so locks it
            stack.enter_context(run.locked(fold))
            root = run.root
        else:
            root = stack.enter_context(worker_scratch(config, cluster, overwrite))
        return _run_training(config, root, cluster, fold, overwrite)


def _run_training(config, root, cluster, fold, overwrite):
    """``run_training`` writing the run folder ``root`` (the chief's, or a worker's copy)."""
    run = RunFolder(root, config)
    config = run.config = _set_up_tensorflow(config, cluster, run.saved_precision(overwrite))
    if config.freeze:
        check_freeze(config)
    is_vunet = config.model == "vunet"
    # Everything that can fail on the user's input fails here, before the run folder changes.
    lus, selection = run_frames.lus_frames(run, keep_generated=True)
    pretrained = None if is_vunet or not config.pretrained else transfer.pretrained_source(config.pretrained)
    # The frames of a stage 1 shared by the folds: V-Unet's LUS pool (unless each fold trains
    # its own), X-Unet's pre-training set (read below).
    stage1_frames = lus if is_vunet and not run.stage1_per_fold else None
    stage1_to_train = overwrite or not all(map(run.is_done, run.stage1_names(fold)))
    if pretrained is not None and pretrained["model"]:
        load_model_for_finetuning(pretrained["model"], config)
    elif not is_vunet and stage1_to_train and pretrained is None:  # --pretrained none: no pre-training set
        stage1_frames = run_frames.salient_frames(run, keep_generated=True)
    if is_vunet and stage1_to_train and transfer.is_run_model(config.encoder_weights):
        transfer.check_encoder_source(config.encoder_weights)
    planned = plan_splits(config, run.stage1, lus, stage1_frames, selection)
    protected = [getattr(config, name) for name in PATH_FIELDS
                 if name not in GROUP_FIELDS or Path(getattr(config, name) or "").is_file()]
    run.create(overwrite, protected)
    try:
        run.check_frames(lus)  # a resumed run: the same frames as when it started
        run.record_frames(lus)
        with run.logging():
            summary = _train_run(run, cluster, fold, lus, selection, planned, stage1_frames, pretrained)
    except BaseException:
        run.abandon()
        raise
    run.finish()
    return summary


def _set_up_tensorflow(config, cluster, saved_precision):
    """Seed, determinism, TF32 and the precision policy for this run; return ``config`` with
    the precision chosen (``auto`` resolved, or ``saved_precision``, the unfinished run's)."""
    if cluster is not None:
        distribution_strategy()  # MultiWorkerMirroredStrategy: before any other TensorFlow op
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.config.experimental.enable_tensor_float_32_execution(config.tf32)
    keras.utils.set_random_seed(config.seed)
    tf.get_logger().setLevel("ERROR")  # retracing notes when each fold builds a new model
    precision, line, slow = choose_precision(
        config.precision, gpu=bool(tf.config.list_physical_devices("GPU")), saved=saved_precision
    )
    (warn if slow else log)(line)
    config = dataclasses.replace(config, precision=precision)  # config.json: the one chosen
    keras.mixed_precision.set_global_policy(config.precision)
    return config


def _train_run(run, cluster, fold, lus, selection, planned, stage1_frames, pretrained):
    """The stages of a run folder ``create`` has made or checked, then its summary."""
    config = run.config
    log(f"== {display_name(config.model)} run {run.root} ({config.preset} preset) ==")
    if cluster is not None:
        log(f"{cluster.workers} workers (MultiWorkerMirroredStrategy), this one {cluster.label}"
            + (", the chief" if cluster.is_chief else "") + "; batch sizes are global")
    log(f"LUS frames: {len(lus)}; {selection}")
    splits = make_splits(run, planned)
    if pretrained is None and not run.stage1_per_fold:
        lock = run.stage1_lock(fold) if not run.is_done(run.stage1) and cluster is None else contextlib.nullcontext()
        with lock:
            _train_stage1(run, run.stage1, stage1_frames, splits[run.stage1])
    if not run.stage1_per_fold:
        make_model, record = _fine_tuning_start(run, pretrained)
    for k in [fold] if fold else range(1, config.folds + 1):
        name = run.fold_names()[k - 1]
        if run.is_done(name):
            log(f"{name} already done: {run.model_path(name)}")
            continue
        part = splits["folds"][k - 1]
        if run.stage1_per_fold:  # V-Unet's decoder trained on this fold's frames only
            stage1 = run.fold_stage1(k)
            _train_stage1(run, stage1, lus, part, f"fold {k}/{config.folds}")
            make_model, record = _fine_tuning_start(run, pretrained, stage1)
        training, validation = lus.subset(part["train"]), lus.subset(part["val"])  # stage 1 copied them too, freed by now
        label = f"{display_name(config.model)} fold {k}/{config.folds}"
        train_stage(
            label,
            run, name,
            make_model,
            training,
            validation,
            lus_stage(config, config.finetune, len(training), label),
            config,
            frozen=config.freeze,
            augment=config.augment,
            record=record,
        )
    summary = summarize_run(run)
    run.write_summary(summary)
    print_summary(summary, run)
    return summary


def _fine_tuning_start(run, pretrained, stage1=None):
    """``(make_model, record)`` of every fold's starting model: the stage-1 model (``stage1``,
    a fold's own, or the run's), the ``--pretrained`` one (``record`` says which run it came
    from), or with ``--pretrained none`` one X-Unet drawn at random from the run's seed, the
    same for every fold."""
    config = run.config
    if pretrained and pretrained["model"] is None:
        def random_start():
            keras.utils.set_random_seed(config.seed)
            return build_xunet((*config.image_size, 1), initializer=config.initializer)

        return random_start, {"started_from": f"random weights (seed {config.seed})", "started_from_sha256": None,
                              "pretrained_from": pretrained}
    if pretrained:  # hashed once, by lungseg.transfer.model_source; the run it came from too
        start_model = Path(pretrained["model"])
        record = {"started_from": str(start_model), "started_from_sha256": pretrained["model_sha256"],
                  "pretrained_from": pretrained}
    else:
        start_model = run.model_path(stage1 or run.stage1)
        record = {"started_from": str(start_model), "started_from_sha256": file_sha256(start_model)}
    return (lambda: load_model_for_finetuning(start_model, config)), record


def lus_stage(config, stage, training_frames, label):
    """``stage`` for a stage on LUS frames: its epochs raised, where the training part is
    smaller than ``--budget-frames``, to train as long as its epochs over that many frames."""
    if training_frames >= config.budget_frames:
        return stage
    epochs = math.ceil(stage.epochs * config.budget_frames / training_frames)
    log(f"[{label}] {epochs} epochs instead of {stage.epochs}: {training_frames} training frames, "
        f"trained as long as {config.budget_frames} would be (--budget-frames)")
    return dataclasses.replace(stage, epochs=epochs)


def _train_stage1(run, stage, frames, part, part_label=None):
    """V-Unet's decoder stage or X-Unet's pre-training into the stage folder ``stage``, trained
    on the frames of ``part["train"]`` and selected on those of ``part["val"]``, unless it is
    done already: then ``frames`` may be None (a resumed X-Unet run does not read its
    pre-training set again). ``part_label`` names a fold's own stage 1."""
    config = run.config
    if run.is_done(stage):
        log(f"{stage} already done: {run.model_path(stage)}")
        return
    training, validation, pool_size = frames.subset(part["train"]), frames.subset(part["val"]), len(frames)
    is_vunet = config.model == "vunet"
    record = {} if is_vunet else {
        "pretraining_set": transfer.pretraining_set(config, pool_size, len(validation))}

    def make_model():
        model, record["encoder_weights_used"] = build_stage1_model(config)
        return model

    label = ("V-Unet stage 1" if is_vunet else "X-Unet pre-training") + (f", {part_label}" if part_label else "")
    stage_config = lus_stage(config, config.stage1, len(training), label) if is_vunet else config.stage1
    steps = None
    if config.stage1_steps == "pool":  # as the notebooks: len(whole pool) // batch
        steps = max(pool_size // config.stage1.batch_size, 1)
    train_stage(
        label,
        run, stage, make_model,
        training,
        validation,
        stage_config,
        config,
        frozen=["encoder"] if is_vunet else [],
        augment=config.augment and is_vunet,
        steps_per_epoch=steps,
        record=record,
    )


def summarize_run(run):
    """Gather stage-1 and per-fold validation metrics into one summary, with what really ran."""
    config = run.config
    folds = {name: run.read_metrics(name) for name in run.fold_names() if run.is_done(name)}
    missing = [k for k, name in enumerate(run.fold_names(), 1) if name not in folds]
    stage1 = run.read_metrics(run.stage1)
    own_names = run.stage1_names() if run.stage1_per_fold else []
    own_stage1 = {name: run.read_metrics(name) for name in own_names if run.is_done(name)}
    encoder = next((m.get("encoder_weights_used") for m in [stage1 or {}, *own_stage1.values()]
                    if m.get("encoder_weights_used")), None)
    summary = {
        "model": config.model,
        "display_name": display_name(config.model, encoder),
        "name": config.name,
        "run": str(run.root),
        "preset": config.preset,
        "lus_frames": config.lus_frames,
        "freeze": config.freeze,
        "split": config.split,
        "precision": config.precision,
        "complete": not missing,
        "folds_missing": missing,
        "encoder_weights_used": encoder,
        run.stage1: stage1,
        "stage1_per_fold": own_stage1 or None,  # --stage1-scope fold: each fold's own stage 1
        "pretrained": config.pretrained,
        "pretrained_from": next((m["pretrained_from"] for m in folds.values() if m.get("pretrained_from")), None),
        "pretraining_set": (stage1 or {}).get("pretraining_set"),
        "folds": folds,
        "across_folds": {m: aggregate_folds({f: v[m] for f, v in folds.items()}) for m in METRICS},
        "metric_definitions": METRIC_DEFINITIONS,
        "environment": environment(distribution_strategy(), config.precision,
                                   workers=getattr(cluster_from_tf_config(), "workers", 1)),
    }
    stages = ([(run.stage1, stage1)] if stage1 else []) + list(own_stage1.items()) + list(folds.items())
    summary["collapse"] = {name: m["collapse"] for name, m in stages if m.get("collapse")}
    stopped = {name: m["collapse_noticed"] for name, m in stages if m.get("stopped_on_collapse")}
    for name, noticed in stopped.items():  # a stopped stage is marked even if its best epoch was not
        summary["collapse"].setdefault(name, f"stopped after epoch {noticed['epoch']}: {noticed['message']}")
    summary["stopped_on_collapse"] = {name: noticed["epoch"] for name, noticed in stopped.items()}
    summary["wall_seconds"] = {name: round(m["train_seconds"] + m["scoring_seconds"], 1) for name, m in stages}
    summary["starting_weights"] = transfer.starting_weights(summary, config)
    return summary


def print_summary(summary, run):
    lines = [f"\n== {summary['name']}: {summary['display_name']} in {summary['run']} =="]
    stage1_name = run.stage1
    rows = ([(stage1_name, summary[stage1_name])] if summary.get(stage1_name) else []) + list(
        (summary.get("stage1_per_fold") or {}).items()) + list(summary["folds"].items())
    width = max([10] + [len(name) for name, _ in rows])
    for name, m in rows:
        lines.append(f"{name:>{width}}: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  accuracy {m['binary_accuracy']:.4f}")
    across = summary["across_folds"]
    if across["dice"]["n"]:
        spread = lambda m: f" +- {across[m]['sd']:.4f}" if across[m]["sd"] is not None else ""  # noqa: E731
        lines.append(
            f"{'mean':>10}: Dice {across['dice']['mean']:.4f}{spread('dice')}  IoU {across['iou']['mean']:.4f}"
            f"{spread('iou')}  accuracy {across['binary_accuracy']['mean']:.4f}   (best: {across['dice']['best']}; "
            "Dice of 20-frame batches as the paper, sample SD)"
        )
    lines.append(f"{'start':>10}: {summary.get('starting_weights', '-')}")
    if (summary.get("encoder_weights_used") or {}).get("weights") == "random":
        lines.append(f"note: the VGG16 encoder was random: {summary['encoder_weights_used']['reason']}")
    for name, message in summary["collapse"].items():
        lines.append(f"warning: {name}: {message}")
    if summary["folds_missing"]:
        lines.append(f"folds still to run: {', '.join(map(str, summary['folds_missing']))}")
    lines.append(f"summary: {run.summary_path}")
    log("\n".join(lines))
