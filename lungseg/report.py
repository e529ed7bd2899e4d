"""Score trained runs and write the results folder: per-image metrics, tables, figures.

``evaluate.py`` is a command line over :func:`evaluate`. What each model is scored on:

* by default, each fold model on its own held-out fold (the frames of ``splits.json``);
* ``test``: every model on the same frames of a separate folder;
* ``test_list``: every model on frames of its run's pool named in a CSV, flipped copies
  included, as the paper's ``Default_testset.csv`` (its scores are contaminated where a model
  trained on a listed frame or its mirror image, and the report says how many).

Every model is scored by ``lungseg.scoring.score_frames`` at its own input resolution, the
very function the stage runner used, so a fold scored on its held-out frames here reports the
Dice its ``summary.json`` holds.

Results folder::

    per_image.csv   one row per (model, frame) with every metric of lungseg.evaluation
    summary.json    per experiment: training summary, per-fold metrics, per-image means
    results.md      the paper-style table
    overlays.png  training_curves.png  boxplots.png  [dice_vs_frames.png]
    masks/<run>/<fold>/<frame>.png   predicted masks (with --save-masks)
"""

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from lungseg import figures
from lungseg.console import log
from lungseg.data.frames import FLIP_SUFFIX
from lungseg.data.io import write_image
from lungseg.errors import ConfigError, DataError
from lungseg.evaluation import EMPTY_MASK_RULE, METRICS, aggregate_folds, nan_to_none, summarize
from lungseg.files import write_json, write_text
from lungseg.predict import input_size, load_model
from lungseg.runs import RunFolder, display_name
from lungseg.scoring import METRIC_DEFINITIONS, score_frames

SCORES = ("dice", "dice_global", "dice_per_image")


@dataclass
class Experiment:
    """One RUN argument: a run folder (its fold models) or a single ``.keras`` file."""

    label: str
    model: str  # "vunet", "xunet" or "model" (a bare .keras file)
    models: dict  # fold name -> model path
    run: RunFolder = None
    training: dict = None  # the run's summary.json, if any
    rows: list = field(default_factory=list)
    fold_metrics: dict = field(default_factory=dict)  # fold name -> lungseg.scoring metrics
    trained_on_test: dict = field(default_factory=dict)  # fold name -> test frames it trained on
    stage1_metrics: dict = None  # stage 1 scored on the test frames, when there are some
    predictions: dict = field(default_factory=dict)  # frame name -> (image, reference, mask)
    masks: dict = field(default_factory=dict)  # (fold, frame name) -> predicted mask

    @property
    def config(self):
        return self.run.config if self.run else None

    @property
    def display_name(self):
        encoder = (self.training or {}).get("encoder_weights_used")
        return f"{display_name(self.model, encoder)} ({self.label})"


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
    run = RunFolder.open(path)
    models = {fold: run.model_path(fold) for fold in run.finished_folds()}
    if not models:
        raise DataError(f"{path}: no finished fold (fold_k/model.keras); finish training first")
    return Experiment(label=run.label, model=run.config.model, models=models, run=run,
                      training=run.read_summary())


def frame_name(path_text):
    """A test-list entry as a frame name: ``.../img_lung_pos2_5_flipped.tif`` -> ``lung_pos2_5_flipped``."""
    stem = Path(path_text.strip().replace("\\", "/")).stem
    return stem[len("img_"):] if stem.startswith("img_") else stem


def read_test_list(path):
    """Frame names of a test-list CSV: the authors' ``Default_testset.csv`` as it is (an index
    column, ``filename``, ``mask``; only each path's file name matters), or one ``filename``
    column, or bare names one per line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"{path}: cannot read the test list ({error.strerror or error})") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: the test list is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("filename") if "filename" in header else None
    body = rows[1:] if column is not None else rows
    column = 0 if column is None else column
    names = [frame_name(row[column]) for row in body if len(row) > column and row[column].strip()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError([f"{path}: frame {name} is listed more than once" for name in duplicates])
    if not names:
        raise DataError(f"{path}: the test list names no frame")
    return names


def mirror_name(name):
    """The name of a frame's mirror image: ``a`` <-> ``a_flipped``."""
    return name[: -len(FLIP_SUFFIX)] if name.endswith(FLIP_SUFFIX) else name + FLIP_SUFFIX


def trained_on(names, training_names):
    """How many of ``names`` a model trained on, as the frame itself or its mirror image."""
    seen = set(training_names)
    return sum(1 for name in names if name in seen or mirror_name(name) in seen)


class FrameSource:
    """The frames each model is scored on, decoded once per resolution and run."""

    def __init__(self, test=None, test_list=None):
        if test and test_list:
            raise ConfigError("give --test or --test-list, not both")
        self.test, self.test_names = test, read_test_list(test_list) if test_list else None
        self.test_list = test_list
        self._cache = {}

    @property
    def description(self):
        if self.test:
            return f"the fixed test set {self.test}"
        if self.test_names:
            return (f"the test list {self.test_list} ({len(self.test_names)} frames of each run's "
                    "pool, as the paper's Default_testset: scores on frames a model trained on are contaminated)")
        return "each fold's held-out frames (splits.json)"

    def fixed(self):
        return bool(self.test or self.test_names)

    def frames(self, experiment, fold, shape):
        """The FrameSet ``fold``'s model of ``experiment`` is scored on, at ``shape``."""
        if self.test:
            if shape not in self._cache:
                from lungseg.data import find_pairs, load_frames

                self._cache[shape] = load_frames(find_pairs(self.test), shape, progress=True)
            return self._cache[shape]
        if experiment.run is None:
            option = "--test DIR" if not self.test_names else "--test DIR (a test list names frames of a run folder's pool)"
            raise ConfigError(f"{experiment.models['model']}: a single .keras model needs {option} to be scored")
        key = experiment.run.root
        if key not in self._cache:
            self._cache[key] = self._run_frames(experiment.run)
        pool = self._cache[key]
        if self.test_names:
            return pool.subset(self.test_names)
        return pool.subset(experiment.run.read_splits()["folds"][int(fold.split("_")[1]) - 1]["val"])

    def _run_frames(self, run):
        if not self.test_names:
            return run.lus_frames()[0]
        everything = run.all_lus_frames()
        missing = [name for name in self.test_names if name not in set(everything.names)]
        if missing:
            raise DataError([f"{self.test_list}: frame {name} is not in the data of {run.root}" for name in missing])
        return everything


def score(experiment, source, batch_size=20):
    """Score every model of the experiment on its frames and fill its rows; one model at a time."""
    expected = tuple(experiment.config.image_size) if experiment.config else None
    models = dict(experiment.models)
    if source.fixed() and experiment.run and experiment.model == "vunet" and experiment.run.is_done("stage1"):
        models = {"stage1": experiment.run.model_path("stage1"), **models}  # the paper's stage-1 Dice
    splits = experiment.run.read_splits() if experiment.run else None
    for fold, path in models.items():
        model = load_model(path)
        height, width, _ = input_size(model, str(path))
        if expected and (height, width) != expected:
            raise DataError(
                f"{path}: model takes {height}x{width} frames but its run "
                f"was trained at {expected[0]}x{expected[1]}"
            )
        frames = source.frames(experiment, fold, (height, width))
        scores = score_frames(model, frames, batch_size)
        if splits and source.test_names:
            part = splits["stage1"] if fold == "stage1" else splits["folds"][int(fold.split("_")[1]) - 1]
            experiment.trained_on_test[fold] = trained_on(frames.names, part["train"])
        if fold == "stage1":
            experiment.stage1_metrics = scores.metrics
            log(f"{experiment.display_name} stage 1: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}")
            continue
        experiment.fold_metrics[fold] = scores.metrics
        for row, image, reference, mask in zip(scores.rows, frames.images, frames.masks, scores.masks):
            experiment.rows.append({"experiment": experiment.label, "model": experiment.model, "fold": fold, **row})
            experiment.masks[fold, row["frame"]] = mask
            experiment.predictions.setdefault(row["frame"], (image[..., 0], reference[..., 0], mask))
        note = ""
        if fold in experiment.trained_on_test:
            note = f"; it trained on {experiment.trained_on_test[fold]} of them (contaminated)"
        log(f"{experiment.display_name} {fold}: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}{note}")


def experiment_summary(experiment):
    """The numbers of one results-table row, plus the per-image summary."""
    config, training = experiment.config, experiment.training or {}
    per_image = summarize(experiment.rows)
    metrics = per_image["metrics"]
    across = {m: aggregate_folds({f: v[m] for f, v in experiment.fold_metrics.items()}) for m in SCORES}
    stage1 = training.get("stage1") or training.get("pretrain") or {}
    stage1_scored_on = "its hold-out" if stage1 else None
    if experiment.stage1_metrics:
        stage1, stage1_scored_on = experiment.stage1_metrics, "the test frames"
    elif training.get("pretrain"):
        stage1_scored_on = "salient-object hold-out"
    frames = None
    if config is not None:
        folds = experiment.run.read_splits()["folds"]
        per_fold = sorted({len(fold["train"]) for fold in folds})
        frames = (f"{config.lus_frames}" + (" (with flips)" if config.flips else "")
                  + f"; {'/'.join(map(str, per_fold))} per fold model")
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
        "model": experiment.display_name.rsplit(" (", 1)[0],
        "encoder_weights_used": training.get("encoder_weights_used"),
        "training_frames": frames,
        "fine_tuning": strategy,
        "stage1_dice": stage1.get("dice"),
        "stage1_scored_on": stage1_scored_on,
        "fold_metrics": experiment.fold_metrics,
        "fold_dice": {fold: m["dice"] for fold, m in experiment.fold_metrics.items()},
        "across_folds": across,
        "fold_dice_mean": across["dice"]["mean"],
        "fold_dice_sd": across["dice"]["sd"],
        "fold_dice_sd_paper": across["dice"]["sd_paper"],
        "best_fold": across["dice"]["best"],
        "best_fold_dice": across["dice"]["best_value"],
        "trained_on_test_frames": experiment.trained_on_test or None,
        "per_image_dice_mean": metrics["dice"]["mean"],
        "spurious_per_image": metrics["spurious"]["mean"],
        "hd95_mean": metrics["hd95"]["mean"],
        "per_image": per_image,
    }


def _number(value, digits=4):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def results_table(summaries, scored_on):
    """The paper-style Markdown table, one row per experiment, and what each number means."""
    lines = [
        "# Results",
        "",
        f"Scored on: {scored_on}.",
        "",
        "| experiment | model | training frames | fine-tuning | stage-1 Dice | fold Dice (mean ± SD) "
        "| SD as the paper (np.std) | best fold | global Dice | per-image Dice "
        "| spurious components / image | HD95 (px) | test frames trained on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        across = s["across_folds"]
        trained = s["trained_on_test_frames"]
        contamination = "-" if trained is None else ", ".join(f"{fold} {n}" for fold, n in trained.items())
        lines.append(
            f"| {s['experiment']} | {s['model']} | {s['training_frames'] or '-'} | {s['fine_tuning']} "
            f"| {_number(s['stage1_dice'])} | {_number(s['fold_dice_mean'])} ± {_number(s['fold_dice_sd'])} "
            f"| {_number(s['fold_dice_sd_paper'])} | {s['best_fold']} ({_number(s['best_fold_dice'])}) "
            f"| {_number(across['dice_global']['mean'])} | {_number(s['per_image_dice_mean'])} "
            f"| {_number(s['spurious_per_image'], 2)} | {_number(s['hd95_mean'], 1)} | {contamination} |"
        )
    lines += ["", "What the numbers are:", ""]
    lines += [f"- **{name}**: {text}." for name, text in (
        ("fold Dice", METRIC_DEFINITIONS["dice"] + "; mean over folds ± sample SD (ddof 1); the paper "
         "reported np.std (ddof 0), given beside it"),
        ("global Dice", METRIC_DEFINITIONS["dice_global"]),
        ("per-image Dice", METRIC_DEFINITIONS["dice_per_image"]),
        ("stage-1 Dice", "V-Unet's decoder stage scored on the test frames when there are some, else on its "
         "hold-out; X-Unet's on its salient-object hold-out"),
        ("test frames trained on", "per fold model, how many of the scored frames it trained on as the frame "
         "itself or its mirror image: such a score is contaminated (optimistic)"),
    )]
    lines += ["", EMPTY_MASK_RULE, ""]
    return "\n".join(lines)


def per_image_csv(experiments):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["experiment", "model", "fold", "frame", *METRICS])
    writer.writeheader()
    for experiment in experiments:
        writer.writerows(experiment.rows)
    return buffer.getvalue()


def make_figures(experiments, summaries, n_frames=4):
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
        for stage in e.run.stages() if e.run else ():
            if e.run.history_path(stage).is_file():
                histories[f"{e.label} {stage}"] = figures.read_history_csv(e.run.history_path(stage))
    if histories:
        result["training_curves"] = figures.training_curves(histories)
    result["boxplots"] = figures.metric_boxplots(
        {e.display_name: {m: [r[m] for r in e.rows] for m in ("dice", "spurious")} for e in experiments}
    )
    points = {}
    for e, s in zip(experiments, summaries):
        if e.config is not None:
            dice = s["across_folds"]["dice"]
            sd = dice["sd"] if dice["sd"] is not None else float("nan")
            points.setdefault(s["model"], []).append((e.config.lus_frames, dice["mean"], sd))
    if any(len({n for n, _, _ in p}) > 1 for p in points.values()):
        result["dice_vs_frames"] = figures.dice_vs_frames(points)
    return result


def evaluate(runs, out, test=None, test_list=None, batch_size=20, n_frames=4, save_masks=False):
    """Score ``runs`` (run folders or .keras files) and write the results folder ``out``.

    Everything is scored before anything is written, so bad input leaves ``out`` untouched.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    source = FrameSource(test, test_list)
    experiments = [open_experiment(path) for path in runs]
    labels = [e.label for e in experiments]
    if len(set(labels)) != len(labels):
        raise DataError(f"two runs share a name ({', '.join(labels)}); results would mix")
    log(f"scoring {len(experiments)} experiment(s) on {source.description}")
    for experiment in experiments:
        score(experiment, source, batch_size)
    summaries = [experiment_summary(e) for e in experiments]
    built = make_figures(experiments, summaries, n_frames)

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "per_image.csv", per_image_csv(experiments))
    write_json(out / "summary.json", nan_to_none({
        "scored_on": source.description,
        "metric_definitions": METRIC_DEFINITIONS,
        "empty_mask_rule": EMPTY_MASK_RULE,
        "experiments": summaries,
    }))
    table = results_table(summaries, source.description)
    write_text(out / "results.md", table)
    for name, figure in built.items():
        figures.save_figure(figure, out / f"{name}.png")
    if save_masks:
        for experiment in experiments:
            for (fold, frame), mask in experiment.masks.items():
                write_image(out / "masks" / experiment.label / fold / f"{frame}.png", mask * 255)
    log(table)
    log(f"results: {out / 'results.md'}, per-image metrics: {out / 'per_image.csv'}, "
        f"figures: {', '.join(str(out / f'{n}.png') for n in built)}")
    return summaries
