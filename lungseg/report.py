"""Score trained runs and write the results folder: per-image metrics, tables, figures.

``evaluate.py`` is a command line over :func:`evaluate`. Each run folder's fold models are
scored on their own held-out fold (the frames of ``splits.json``), or, with a test folder,
every model on the same fixed test frames, as the paper's ``Default_testset``. Each model is
scored at its own input resolution, so HD95 is in pixels of that resolution.

Results folder::

    per_image.csv   one row per (model, frame) with every metric of lungseg.evaluation
    summary.json    per experiment: training summary, per-fold Dice, per-image means
    results.md      the paper-style table
    overlays.png  training_curves.png  boxplots.png  [dice_vs_frames.png]
    masks/<run>/<fold>/<frame>.png   predicted masks (with --save-masks)
"""

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungseg import data, figures
from lungseg.data.io import write_image
from lungseg.config import RunConfig
from lungseg.errors import ConfigError, DataError
from lungseg.evaluation import EMPTY_MASK_RULE, batch_dice, image_metrics, nan_to_none, summarize
from lungseg.files import read_json, write_json, write_text
from lungseg.predict import input_size, load_model, predict_probabilities

MODEL_NAMES = {"vunet": "V-Unet", "xunet": "X-Unet"}
ROW_METRICS = ("dice", "iou", "accuracy", "precision", "recall", "hd95",
               "components_pred", "components_ref", "spurious")


def log(message):
    print(message, flush=True)


@dataclass
class Experiment:
    """One RUN argument: a run folder (its fold models) or a single ``.keras`` file."""

    label: str
    model: str  # "vunet", "xunet" or "model" (a bare .keras file)
    models: dict  # fold name -> model path
    config: RunConfig = None
    training: dict = None  # the run's summary.json, if any
    rows: list = field(default_factory=list)
    fold_dice: dict = field(default_factory=dict)  # fold name -> paper-style Dice
    predictions: dict = field(default_factory=dict)  # frame name -> (image, reference, mask)
    masks: dict = field(default_factory=dict)  # (fold, frame name) -> predicted mask

    @property
    def display_name(self):
        return f"{MODEL_NAMES.get(self.model, 'model')} ({self.label})"


def open_experiment(path):
    """An Experiment for a run folder or a ``.keras`` file; DataError when it is neither."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix != ".keras":
            raise DataError(f"{path}: not a run folder or a .keras model file")
        return Experiment(label=path.stem if path.stem != "model" else path.parent.name,
                          model="model", models={"model": path})
    config_path = path / "config.json"
    if not config_path.is_file():
        raise DataError(f"{path}: not a run folder (no config.json); train one with train_vunet.py or train_xunet.py")
    config = RunConfig.from_dict(read_json(config_path))
    models = {}
    for k in range(1, config.folds + 1):
        model_path = path / f"fold_{k}" / "model.keras"
        if (path / f"fold_{k}" / "metrics.json").is_file() and model_path.is_file():
            models[f"fold_{k}"] = model_path
    if not models:
        raise DataError(f"{path}: no finished fold (fold_k/model.keras); finish training first")
    training = read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    return Experiment(label=path.name, model=config.model, models=models, config=config, training=training)


def _held_out_frames(experiment):
    """fold -> FrameSet of the frames each fold model did not train on (splits.json)."""
    if experiment.config is None:
        raise ConfigError(f"{experiment.models['model']}: a single .keras model needs --test DIR to be scored")
    from lungseg.training import load_lus_frames  # TensorFlow only when a run is scored

    lus = load_lus_frames(experiment.config)
    splits = data.read_splits(Path(experiment.config.out) / experiment.config.name / "splits.json")
    return {fold: lus.subset(splits["folds"][int(fold.split("_")[1]) - 1]["val"]) for fold in experiment.models}


def score(experiment, test_frames=None, batch_size=20):
    """Predict every frame each model of the experiment is scored on and fill its rows.

    Models are loaded one at a time; each is scored at its own input size.
    """
    expected = tuple(experiment.config.image_size) if experiment.config else None
    held_out = None
    for fold, path in experiment.models.items():
        model = load_model(path)
        height, width, _ = input_size(model, str(path))
        if expected and (height, width) != expected:
            raise DataError(
                f"{path}: model takes {height}x{width} frames but its run "
                f"was trained at {expected[0]}x{expected[1]}"
            )
        if test_frames is not None:
            frames = test_frames((height, width))
        else:
            held_out = held_out or _held_out_frames(experiment)
            frames = held_out[fold]
        probabilities = predict_probabilities(model, [image[..., 0] for image in frames.images], batch_size)
        references = frames.masks[..., 0]
        experiment.fold_dice[fold] = batch_dice(references, probabilities)
        for name, image, reference, probability in zip(frames.names, frames.images, references, probabilities):
            mask = (probability > 0.5).astype(np.uint8)
            row = {"experiment": experiment.label, "model": experiment.model, "fold": fold, "frame": name}
            row.update(image_metrics(reference, mask))
            experiment.rows.append(row)
            experiment.masks[fold, name] = mask
            experiment.predictions.setdefault(name, (image[..., 0], reference, mask))
        log(f"{experiment.display_name} {fold}: {len(frames)} frames, Dice {experiment.fold_dice[fold]:.4f}")


def experiment_summary(experiment):
    """The numbers of one results-table row, plus the per-image summary."""
    config, training = experiment.config, experiment.training or {}
    dice = list(experiment.fold_dice.values())
    stage1 = training.get("stage1") or training.get("pretrain") or {}
    per_image = summarize(experiment.rows)
    metrics = per_image["metrics"]
    frames = None
    if config is not None:
        frames = f"{config.lus_frames}" + (" (with flips)" if config.flips else "")
    if config is None:
        strategy = "-"
    elif config.model == "vunet":
        strategy = "decoder, then all layers"
    elif config.pretrained:
        strategy = f"reused pre-training; frozen: {', '.join(config.freeze) or 'none'}"
    else:
        strategy = f"frozen: {', '.join(config.freeze)}" if config.freeze else "all layers"
    return {
        "experiment": experiment.label,
        "model": MODEL_NAMES.get(experiment.model, "model"),
        "training_frames": frames,
        "fine_tuning": strategy,
        "stage1_dice": stage1.get("dice"),
        "fold_dice": experiment.fold_dice,
        "fold_dice_mean": float(np.mean(dice)),
        "fold_dice_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else math.nan,
        "best_fold": max(experiment.fold_dice, key=experiment.fold_dice.get),
        "best_fold_dice": max(dice),
        "per_image_dice_mean": metrics["dice"]["mean"],
        "spurious_per_image": metrics["spurious"]["mean"],
        "hd95_mean": metrics["hd95"]["mean"],
        "per_image": per_image,
    }


def results_table(summaries, scored_on):
    """The paper-style Markdown table, one row per experiment."""

    def number(value, digits=4):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    lines = [
        "# Results",
        "",
        f"Scored on: {scored_on}. Fold Dice is the paper's Dice (smoothing 1, over all scored "
        "frames of a fold, soft probabilities); per-image metrics threshold at 0.5.",
        "",
        "| experiment | model | training frames | fine-tuning | stage-1 Dice | fold Dice (mean ± SD) "
        "| best fold | per-image Dice | spurious components / image | HD95 (px) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['experiment']} | {s['model']} | {s['training_frames'] or '-'} | {s['fine_tuning']} "
            f"| {number(s['stage1_dice'])} | {number(s['fold_dice_mean'])} ± {number(s['fold_dice_sd'])} "
            f"| {s['best_fold']} ({number(s['best_fold_dice'])}) | {number(s['per_image_dice_mean'])} "
            f"| {number(s['spurious_per_image'], 2)} | {number(s['hd95_mean'], 1)} |"
        )
    lines += ["", EMPTY_MASK_RULE, ""]
    return "\n".join(lines)


def per_image_csv(experiments):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["experiment", "model", "fold", "frame", *ROW_METRICS])
    writer.writeheader()
    for experiment in experiments:
        writer.writerows(experiment.rows)
    return buffer.getvalue()


def make_figures(experiments, n_frames=4):
    """name -> Figure: overlays, training curves, box plots, and Dice against frame count."""
    result = {}
    common = set.intersection(*(set(e.predictions) for e in experiments))
    first = experiments[0]
    with_ribs = [n for n in first.predictions if n in common and first.predictions[n][1].any()]
    chosen = (with_ribs or sorted(common))[:n_frames]
    result["overlays"] = figures.overlay_grid(
        [first.predictions[n][0] for n in chosen],
        [first.predictions[n][1] for n in chosen],
        {e.display_name: [e.predictions[n][2] for n in chosen] for e in experiments},
        names=chosen,
    )
    histories = {}
    for e in experiments:
        if e.config is None:
            continue
        root = Path(e.config.out) / e.config.name
        for stage in ("stage1", "pretrain", *e.models):
            path = root / stage / "history.csv"
            if path.is_file():
                histories[f"{e.label} {stage}"] = figures.read_history_csv(path)
    if histories:
        result["training_curves"] = figures.training_curves(histories)
    result["boxplots"] = figures.metric_boxplots(
        {e.display_name: {m: [r[m] for r in e.rows] for m in ("dice", "spurious")} for e in experiments}
    )
    points = {}
    for e in experiments:
        if e.config is not None:
            dice = list(e.fold_dice.values())
            sd = float(np.std(dice, ddof=1)) if len(dice) > 1 else math.nan
            points.setdefault(MODEL_NAMES[e.model], []).append((e.config.lus_frames, float(np.mean(dice)), sd))
    if any(len({n for n, _, _ in p}) > 1 for p in points.values()):
        result["dice_vs_frames"] = figures.dice_vs_frames(points)
    return result


def evaluate(runs, out, test=None, batch_size=20, n_frames=4, save_masks=False):
    """Score ``runs`` (run folders or .keras files) and write the results folder ``out``.

    Everything is scored before anything is written, so bad input leaves ``out`` untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    experiments = [open_experiment(path) for path in runs]
    labels = [e.label for e in experiments]
    if len(set(labels)) != len(labels):
        raise DataError(f"two runs share a name ({', '.join(labels)}); results would mix")
    test_frames = None
    if test is not None:
        pairs = data.find_pairs(test)
        cache = {}

        def test_frames(shape):
            if shape not in cache:
                cache[shape] = data.load_frames(pairs, shape, progress=True)
            return cache[shape]

    scored_on = f"the fixed test set {test}" if test else "each fold's held-out frames (splits.json)"
    log(f"scoring {len(experiments)} experiment(s) on {scored_on}")
    for experiment in experiments:
        score(experiment, test_frames, batch_size)
    summaries = [experiment_summary(e) for e in experiments]
    built = make_figures(experiments, n_frames)

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "per_image.csv", per_image_csv(experiments))
    write_json(out / "summary.json", nan_to_none({
        "scored_on": scored_on,
        "empty_mask_rule": EMPTY_MASK_RULE,
        "experiments": summaries,
    }))
    write_text(out / "results.md", results_table(summaries, scored_on))
    for name, figure in built.items():
        figures.save_figure(figure, out / f"{name}.png")
    if save_masks:
        for experiment in experiments:
            for (fold, frame), mask in experiment.masks.items():
                write_image(out / "masks" / experiment.label / fold / f"{frame}.png", mask * 255)
    log(results_table(summaries, scored_on))
    log(f"results: {out / 'results.md'}, per-image metrics: {out / 'per_image.csv'}, "
        f"figures: {', '.join(str(out / f'{n}.png') for n in built)}")
    return summaries
