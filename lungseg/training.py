"""Staged training of the paper's protocols, into a run folder that can be resumed.

Stage 1 is V-Unet's decoder-only training (encoder frozen) or X-Unet's pre-training on
salient objects; stage 2 fine-tunes a copy of the stage-1 model on each of k folds of LUS
frames. Every epoch leaves a complete state on disk (written under a temporary name, then
renamed), so running the same command again after a crash resumes at the last finished epoch.

Run folder::

    config.json  splits.json  summary.json
    stage1/ or pretrain/   model.keras (best by val_loss)  history.csv  metrics.json
    fold_1/ ... fold_k/    the same
"""

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from lungseg import data
from lungseg.config import RunConfig
from lungseg.errors import ConfigError, LungsegError, RunExistsError, WeightsUnavailableError
from lungseg.files import atomic_path, read_json, write_json, write_text
from lungseg.losses import dice_coef, dice_loss, iou
from lungseg.models import as_float32, build_vunet, build_xunet, freeze, part_layers, unfreeze, with_policy
from lungseg.precision import choose_precision

# A stage has collapsed when more than this share of validation frames that contain ribs get
# an empty (or all-foreground) prediction.
COLLAPSE_SHARE = 0.5
METRICS = ("dice", "iou", "binary_accuracy")


def log(message):
    print(message, flush=True)


class EpochCheckpoint(keras.callbacks.Callback):
    """Keeps the best model by ``val_loss`` and a resumable training state, both atomic.

    Plays the part of ``ModelCheckpoint(save_best_only=True)`` plus ``BackupAndRestore``, but a
    kill at any instant leaves either the previous or the new complete files: weights go to a
    new per-epoch file first, then ``state.json`` (renamed into place) points to it.
    """

    def __init__(self, stage_dir):
        super().__init__()
        self.stage_dir = Path(stage_dir)
        self.state_dir = self.stage_dir / "state"
        self.state_path = self.state_dir / "state.json"
        self.best_path = self.stage_dir / "model.keras"
        self.history_path = self.stage_dir / "history.csv"
        self.best_val_loss = math.inf
        self.best_epoch = None
        self.saved_model = None  # the float32 copy saved as model.keras, reused epoch to epoch

    def restore(self, model):
        """Load the saved state into ``model`` (compiled); return the epoch to start from."""
        if not self.state_path.exists():
            # Nothing finished in this stage yet: drop leftovers of a run killed in epoch 1.
            for stale in (self.best_path, self.history_path):
                stale.unlink(missing_ok=True)
            return 0
        state = read_json(self.state_path)
        model.optimizer.build(model.trainable_variables)
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
            # Saved in float32 whatever the training policy, so inference is not changed by it.
            self.saved_model = as_float32(self.model, into=self.saved_model)
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


def distribution_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def validation_metrics(model, frames, batch_size):
    """Paper-style batch-global Dice and IoU, pixel accuracy, and shares of degenerate masks."""
    probabilities = model.predict(
        data.make_dataset(frames, batch_size, channels=model.input_shape[-1]), verbose=0
    )
    truth = frames.masks.astype(np.float32)
    predicted = probabilities > 0.5
    pixels = predicted.reshape(len(frames), -1).sum(axis=1)
    has_ribs = truth.reshape(len(frames), -1).sum(axis=1) > 0
    size = predicted[0].size
    with_ribs = max(int(has_ribs.sum()), 1)
    return {
        "dice": float(dice_coef(truth, probabilities)),
        "iou": float(iou(truth, probabilities)),
        "binary_accuracy": float(np.mean(predicted == truth.astype(bool))),
        "frames": len(frames),
        "empty_predictions": float(np.mean(pixels == 0)),
        "empty_references": float(np.mean(~has_ribs)),
        "empty_on_ribs": float(np.sum((pixels == 0) & has_ribs) / with_ribs),
        "full_predictions": float(np.mean(pixels == size)),
    }


def collapse_message(metrics):
    """Words for a collapsed stage, or None."""
    if metrics["empty_on_ribs"] > COLLAPSE_SHARE:
        return (
            f"collapsed to all background: {metrics['empty_on_ribs']:.0%} of validation frames "
            f"with ribs got an empty prediction ({metrics['empty_predictions']:.0%} of all "
            "predictions are empty)"
        )
    if metrics["full_predictions"] > COLLAPSE_SHARE:
        return (
            f"collapsed to all foreground: {metrics['full_predictions']:.0%} of validation "
            "predictions cover the whole frame"
        )
    return None


def train_stage(label, stage_dir, make_model, train, val, stage, config, frozen=(), augment=True):
    """Train one stage (or resume it) and write its metrics; return them.

    ``make_model`` builds or loads the starting model; ``frozen`` lists the parts or layer
    names that stay frozen. The best model by ``val_loss`` is kept as ``model.keras``.
    """
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with distribution_strategy().scope():
        model = make_model()
        unfreeze(model)
        trainable, frozen_count = freeze(model, list(frozen))
        model.compile(
            optimizer=keras.optimizers.Adam(stage.learning_rate),
            loss=dice_loss,
            metrics=[dice_coef, iou, "binary_accuracy"],
            jit_compile=config.jit_compile,
        )
    log(
        f"[{label}] {trainable:,} trainable and {frozen_count:,} frozen parameters; "
        f"{len(train)} training and {len(val)} validation frames; {stage.epochs} epochs, "
        f"batch {stage.batch_size}, Adam {stage.learning_rate:g}"
        + (", augmented" if augment else "")
    )
    checkpoint = EpochCheckpoint(stage_dir)
    initial_epoch = checkpoint.restore(model)
    if initial_epoch:
        log(f"[{label}] resuming after epoch {initial_epoch} of {stage.epochs}")
    channels = model.input_shape[-1]
    augmentation = data.PaperAugmentation() if augment else None
    train_ds = data.make_dataset(
        train, stage.batch_size, channels=channels, training=True, augment=augmentation,
        seed=config.seed + initial_epoch,
    )
    val_ds = data.make_dataset(val, stage.batch_size, channels=channels)
    if initial_epoch < stage.epochs:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=stage.epochs,
            initial_epoch=initial_epoch,
            callbacks=[
                keras.callbacks.TerminateOnNaN(),
                keras.callbacks.CSVLogger(str(checkpoint.history_path), append=True),
                checkpoint,
            ],
            shuffle=False,  # the data set shuffles itself, seeded
            verbose=1 if sys.stdout.isatty() else 2,
        )
    if not checkpoint.best_path.exists():
        raise LungsegError(
            f"[{label}] training produced no finite validation loss (NaN); "
            "try a lower --lr or check the data"
        )
    best = keras.models.load_model(checkpoint.best_path)
    metrics = validation_metrics(best, val, stage.batch_size)
    metrics.update(
        best_epoch=checkpoint.best_epoch,
        val_loss=checkpoint.best_val_loss,
        epochs=stage.epochs,
        training_frames=len(train),
        trainable_parameters=trainable,
        frozen_parameters=frozen_count,
        collapse=collapse_message(metrics),
    )
    write_json(stage_dir / "metrics.json", metrics)
    checkpoint.clear()
    log(
        f"[{label}] best epoch {metrics['best_epoch']}: validation Dice {metrics['dice']:.4f}, "
        f"IoU {metrics['iou']:.4f}, accuracy {metrics['binary_accuracy']:.4f}"
    )
    if metrics["collapse"]:
        log(f"[{label}] WARNING: {metrics['collapse']}")
    return metrics


class Run:
    """A run folder: its configuration, splits, stages and summary."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.root = Path(config.out) / config.name
        self.stage1 = "pretrain" if config.model == "xunet" else "stage1"

    def fold_dir(self, k):
        return self.root / f"fold_{k}"

    def is_done(self, stage_dir):
        return (Path(stage_dir) / "metrics.json").exists()

    def is_finished(self):
        path = self.root / "summary.json"
        return path.exists() and read_json(path).get("complete", False)

    def open(self, overwrite=False):
        """Create the run folder, or check that an existing one holds the same configuration.

        A finished run is only replaced with ``overwrite``; an unfinished one with the same
        configuration is resumed.
        """
        config_path = self.root / "config.json"
        if self.root.exists() and any(self.root.iterdir()):
            if overwrite:
                log(f"--overwrite: removing the previous run in {self.root}")
                shutil.rmtree(self.root)
            elif not config_path.exists():
                raise RunExistsError(
                    f"{self.root} exists and is not a lungseg run folder; choose another --name or --out"
                )
            else:
                saved = read_json(config_path)
                differences = sorted(k for k, v in self.config.to_dict().items() if saved.get(k) != _jsonable(v))
                if differences:
                    raise RunExistsError(
                        f"{self.root} holds a run with a different configuration "
                        f"({', '.join(differences)}); use another --name, or --overwrite to replace it"
                    )
                if self.is_finished():
                    raise RunExistsError(
                        f"{self.root} holds a finished run; use --overwrite to replace it or "
                        "another --name"
                    )
                log(f"resuming the unfinished run in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        write_text(config_path, self.config.to_json())


def _jsonable(value):
    return json.loads(json.dumps(value))


def load_lus_frames(config):
    """The LUS training frames: the user's, or generated phantom frames cached under --out."""
    if config.data:
        root = Path(config.data)
        log(f"LUS frames from {root}")
    else:
        originals = config.lus_frames // 2 if config.flips else config.lus_frames
        n = max(config.synthetic_lus, originals)
        root = data.ensure_dataset(
            "lus", Path(config.out) / "_synthetic" / f"lus_{n}_seed{config.seed}", n=n, seed=config.seed
        )
        log(f"no --data given: using {n} generated phantom LUS frames in {root}")
    pairs = data.find_pairs(root, groups=config.groups)
    frames = data.load_frames(pairs, config.image_size, config.interpolation, progress=True)
    return data.select_lus_frames(frames, config.lus_frames, flips=config.flips)


def load_salient_frames(config):
    if config.salient:
        root = Path(config.salient)
        log(f"salient-object images from {root}")
    else:
        n = config.synthetic_salient
        root = data.ensure_dataset(
            "salient", Path(config.out) / "_synthetic" / f"salient_{n}_seed{config.seed}", n=n, seed=config.seed
        )
        log(f"no --salient given: using {n} generated salient-object composites in {root}")
    pairs = data.find_pairs(root, groups=config.groups if config.salient else None)
    return data.load_frames(pairs, config.image_size, config.interpolation, progress=True)


def make_splits(run, lus, stage1_frames):
    """Stage-1 hold-out and k folds, read back from splits.json when the run resumes."""
    config = run.config
    path = run.root / "splits.json"
    if path.exists():
        splits = data.read_splits(path)
    else:
        splits = {"mode": config.split, "seed": config.seed}
        if stage1_frames is not None:
            splits[run.stage1] = data.holdout_split(
                stage1_frames.names, stage1_frames.groups, config.validation_fraction,
                mode=config.split, seed=config.seed,
            )
        splits["folds"] = data.kfold_splits(lus.names, lus.groups, config.folds, mode=config.split, seed=config.seed)
        data.write_splits(path, splits)
    return splits


def build_stage1_model(config):
    """V-Unet with its encoder weights, falling back to random ones only where allowed."""
    shape = (*config.image_size, 1)
    if config.model == "xunet":
        return build_xunet(shape, initializer=config.initializer)
    weights = config.encoder_weights
    try:
        return build_vunet(
            shape,
            encoder_weights=None if weights in (None, "none") else weights,
            initializer=config.initializer,
        )
    except WeightsUnavailableError as error:
        if not config.fallback_to_random_weights:
            raise
        log(f"WARNING: {error}\nWARNING: continuing with a randomly initialised VGG16 encoder")
        return build_vunet(shape, encoder_weights=None, initializer=config.initializer)


def check_freeze(config):
    """Check the --freeze names on a tiny model now, not after hours of stage 1."""
    if config.model == "xunet":
        probe = build_xunet((16, 16, 1))
    else:
        probe = build_vunet((16, 16, 1), encoder_weights=None)
    part_layers(probe, config.freeze)


def load_model_for_finetuning(path, config):
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise LungsegError(f"{path}: cannot load the model ({type(error).__name__}: {error})") from error
    expected = (*config.image_size, 1)
    if tuple(model.input_shape[1:]) != expected:
        raise ConfigError(
            f"{path}: model takes {model.input_shape[1]}x{model.input_shape[2]} frames, "
            f"but --image-size is {config.image_size[0]}x{config.image_size[1]}"
        )
    return with_policy(model, config.precision)  # saved float32: computes as the run does


def run_training(config: RunConfig, fold=None, overwrite=False):
    """Run (or resume) the whole protocol of ``config``; return the summary dict."""
    config.validate()
    if fold is not None and not 1 <= fold <= config.folds:
        raise ConfigError(f"--fold must be between 1 and --folds ({config.folds}), got {fold}")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    tf.get_logger().setLevel("ERROR")  # retracing notes when each fold builds a new model
    saved = Path(config.out) / config.name / "config.json"
    saved = read_json(saved).get("precision") if saved.is_file() and not overwrite else None
    precision, line, _ = choose_precision(
        config.precision, gpu=bool(tf.config.list_physical_devices("GPU")), saved=saved
    )
    log(line)
    config = dataclasses.replace(config, precision=precision)  # config.json: the one chosen
    keras.mixed_precision.set_global_policy(config.precision)

    if config.freeze:
        check_freeze(config)
    run = Run(config)
    # Everything that can fail on the user's input fails here, before the run folder changes.
    lus = load_lus_frames(config)
    pretrained = config.pretrained if config.model == "xunet" else None
    stage1_frames = lus if config.model == "vunet" else None
    if pretrained is not None:
        load_model_for_finetuning(pretrained, config)
    elif config.model == "xunet" and (overwrite or not run.is_done(run.root / run.stage1)):
        stage1_frames = load_salient_frames(config)
    run.open(overwrite)
    splits = make_splits(run, lus, stage1_frames)

    stage1_dir = run.root / run.stage1
    if pretrained is None:
        if not run.is_done(stage1_dir):
            part = splits[run.stage1]
            is_vunet = config.model == "vunet"
            train_stage(
                "V-Unet stage 1" if is_vunet else "X-Unet pre-training",
                stage1_dir,
                lambda: build_stage1_model(config),
                stage1_frames.subset(part["train"]),
                stage1_frames.subset(part["val"]),
                config.stage1,
                config,
                frozen=["encoder"] if is_vunet else [],
                augment=config.augment and is_vunet,
            )
        else:
            log(f"{run.stage1} already done: {stage1_dir / 'model.keras'}")
    start_model = Path(pretrained) if pretrained else stage1_dir / "model.keras"

    folds = [fold] if fold else range(1, config.folds + 1)
    for k in folds:
        fold_dir = run.fold_dir(k)
        if run.is_done(fold_dir):
            log(f"fold {k} already done: {fold_dir / 'model.keras'}")
            continue
        part = splits["folds"][k - 1]
        train_stage(
            f"{'V-Unet' if config.model == 'vunet' else 'X-Unet'} fold {k}/{config.folds}",
            fold_dir,
            lambda: load_model_for_finetuning(start_model, config),
            lus.subset(part["train"]),
            lus.subset(part["val"]),
            config.finetune,
            config,
            frozen=config.freeze,
            augment=config.augment,
        )
    summary = summarize_run(run)
    write_json(run.root / "summary.json", summary)
    print_summary(summary)
    return summary


def summarize_run(run):
    """Gather stage-1 and per-fold validation metrics into one summary (mean and sample SD)."""
    config = run.config
    stage1_dir = run.root / run.stage1
    folds = {}
    for k in range(1, config.folds + 1):
        if run.is_done(run.fold_dir(k)):
            folds[f"fold_{k}"] = read_json(run.fold_dir(k) / "metrics.json")
    missing = [k for k in range(1, config.folds + 1) if f"fold_{k}" not in folds]
    summary = {
        "model": config.model,
        "name": config.name,
        "run": str(run.root),
        "preset": config.preset,
        "lus_frames": config.lus_frames,
        "freeze": config.freeze,
        "split": config.split,
        "precision": config.precision,
        "complete": not missing,
        "folds_missing": missing,
        run.stage1: read_json(stage1_dir / "metrics.json") if run.is_done(stage1_dir) else None,
        "pretrained": config.pretrained,
        "folds": folds,
    }
    values = {m: [f[m] for f in folds.values()] for m in METRICS}
    summary["mean"] = {m: float(np.mean(v)) if v else None for m, v in values.items()}
    summary["sd"] = {m: float(np.std(v, ddof=1)) if len(v) > 1 else None for m, v in values.items()}
    summary["sd_definition"] = "sample standard deviation over folds (ddof=1)"
    summary["best_fold"] = max(folds, key=lambda f: folds[f]["dice"]) if folds else None
    stages = ([(run.stage1, summary[run.stage1])] if summary[run.stage1] else []) + list(folds.items())
    summary["collapse"] = {name: m["collapse"] for name, m in stages if m.get("collapse")}
    return summary


def print_summary(summary):
    stage1_name = "pretrain" if "pretrain" in summary else "stage1"
    lines = [f"\n== {summary['name']} ({summary['model']}) in {summary['run']} =="]
    stage1 = summary.get(stage1_name)
    if stage1:
        lines.append(f"{stage1_name:>10}: Dice {stage1['dice']:.4f}  IoU {stage1['iou']:.4f}  accuracy {stage1['binary_accuracy']:.4f}")
    for name, m in summary["folds"].items():
        lines.append(f"{name:>10}: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  accuracy {m['binary_accuracy']:.4f}")
    if summary["folds"]:
        mean, sd = summary["mean"], summary["sd"]
        spread = lambda m: f" +- {sd[m]:.4f}" if sd[m] is not None else ""
        lines.append(
            f"{'mean':>10}: Dice {mean['dice']:.4f}{spread('dice')}  IoU {mean['iou']:.4f}{spread('iou')}  "
            f"accuracy {mean['binary_accuracy']:.4f}   (best: {summary['best_fold']})"
        )
    for name, message in summary["collapse"].items():
        lines.append(f"WARNING {name}: {message}")
    if summary["folds_missing"]:
        lines.append(f"folds still to run: {', '.join(map(str, summary['folds_missing']))}")
    lines.append(f"summary: {Path(summary['run']) / 'summary.json'}")
    log("\n".join(lines))
