"""Writing the results folder: the summary of each scored experiment, the Markdown results
table (``lungseg.markdown``), ``per_image.csv``, ``summary.json`` and the figures
(``lungseg.figures``). Takes :class:`~lungseg.report.scores.Scored` records; scores nothing."""

import csv
import io
import math

import numpy as np

from lungseg import figures
from lungseg.config import ALL_FRAMES
from lungseg.data.io import write_image
from lungseg.evaluation import EMPTY_MASK_RULE, METRICS, aggregate_folds, nan_to_none, summarize
from lungseg.files import write_json, write_text
from lungseg.markdown import markdown_table
from lungseg.scoring import METRIC_DEFINITIONS
from lungseg.transfer import starting_weights

SCORES = ("dice", "dice_global", "dice_per_image")


def experiment_summary(scored):
    """The numbers of one results-table row of a :class:`~lungseg.report.scores.Scored`, plus
    the per-image summary."""
    training = scored.training or {}
    per_image = summarize(scored.rows)
    pool, training_frames = _training_frames(scored)
    metrics = per_image["metrics"]
    across = {m: aggregate_folds({f: v[m] for f, v in scored.fold_metrics.items()}) for m in SCORES}
    stage1 = training.get("stage1") or training.get("pretrain") or {}
    own_stage1 = training.get("stage1_per_fold") or {}  # --stage1-scope fold: one stage 1 a fold
    stage1_dice, stage1_models = stage1.get("dice"), 1 if stage1 else 0
    stage1_scored_on = "its hold-out" if stage1 else None
    if scored.stage1_metrics:
        stage1_dice, stage1_models, stage1_scored_on = scored.stage1_metrics["dice"], 1, "the test frames"
    elif training.get("pretrain"):
        stage1_scored_on = "pre-training set's hold-out"
    elif own_stage1:
        stage1_dice = float(np.mean([m["dice"] for m in own_stage1.values()]))
        stage1_models = len(own_stage1)
        stage1_scored_on = f"each fold's hold-out, mean of {stage1_models} stage 1s"
    return {
        "experiment": scored.label,
        "model": scored.display_name.rsplit(" (", 1)[0],
        "encoder_weights_used": training.get("encoder_weights_used"),
        "pool_frames": pool,
        "training_frames": training_frames,
        "fine_tuning": _fine_tuning(scored),
        "starting_weights": starting_weights(training, scored.config) if scored.model != "masks" else "-",
        "stage1_dice": stage1_dice,
        "stage1_scored_on": stage1_scored_on,
        "stage1_models": stage1_models,
        "fold_metrics": scored.fold_metrics,
        "fold_dice": {fold: m["dice"] for fold, m in scored.fold_metrics.items()},
        "across_folds": across,
        "fold_dice_mean": across["dice"]["mean"],
        "fold_dice_sd": across["dice"]["sd"],
        "fold_dice_sd_paper": across["dice"]["sd_paper"],
        "best_fold": across["dice"]["best"],
        "best_fold_dice": across["dice"]["best_value"],
        "trained_on_test_frames": scored.trained_on_test or None,
        "per_image_dice_mean": metrics["dice"]["mean"],
        "spurious_per_image": metrics["spurious"]["mean"],
        "hd95_mean": metrics["hd95"]["mean"],
        "assd_mean": metrics["assd"]["mean"],
        "hd95_mm_mean": metrics["hd95_mm"]["mean"] if "hd95_mm" in metrics else None,
        "assd_mm_mean": metrics["assd_mm"]["mean"] if "assd_mm" in metrics else None,
        "prediction": scored.options.describe() if scored.model != "masks" else "mask files",
        "per_image": per_image,
    }


def _training_frames(experiment):
    """``(pool, "<pool>[ (with flips)]; <n>/<m> per fold model")``: how many LUS frames the run
    trained on (its folds' pool, mirror images included) and in words; Nones without a run folder."""
    config = experiment.config
    if config is None:
        return None, None
    splits = experiment.splits
    pool = len(splits["lus_frames"]) if config.lus_frames == ALL_FRAMES else config.lus_frames
    per_fold = sorted({len(fold["train"]) for fold in splits["folds"]})
    return pool, (f"{pool}" + (" (with flips)" if config.flips else "")
                  + f"; {'/'.join(map(str, per_fold))} per fold model")


def _fine_tuning(experiment):
    """How the run's models were trained, in words (the results table's fine-tuning column)."""
    config = experiment.config
    if config is None:
        return "-" if experiment.model != "masks" else f"masks from {experiment.mask_folder}"
    if config.model == "vunet":
        return "decoder, then all layers"
    return f"frozen: {', '.join(config.freeze)}" if config.freeze else "all layers"


def _number(value, digits=4):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _stage1_cell(summary):
    models = summary.get("stage1_models", 1)
    return _number(summary["stage1_dice"]) + (f" (mean of {models})" if models > 1 else "")


def _contamination(summary):
    trained = summary["trained_on_test_frames"]
    return "-" if trained is None else ", ".join(f"{fold} {n}" for fold, n in trained.items())


def result_columns(millimetres=False):
    """The results table's columns: ``(header, cell)`` pairs, ``cell`` a function of a summary."""
    columns = [
        ("experiment", lambda s: s["experiment"]),
        ("model", lambda s: s["model"]),
        ("prediction", lambda s: s.get("prediction", "plain")),
        ("training frames", lambda s: s["training_frames"] or "-"),
        ("fine-tuning", lambda s: s["fine_tuning"]),
        ("starting weights", lambda s: s.get("starting_weights", "-")),
        ("stage-1 Dice", _stage1_cell),
        ("fold Dice (mean ± SD)", lambda s: f"{_number(s['fold_dice_mean'])} ± {_number(s['fold_dice_sd'])}"),
        ("SD as the paper (np.std)", lambda s: _number(s["fold_dice_sd_paper"])),
        ("best fold", lambda s: f"{s['best_fold']} ({_number(s['best_fold_dice'])})"),
        ("global Dice", lambda s: _number(s["across_folds"]["dice_global"]["mean"])),
        ("per-image Dice", lambda s: _number(s["per_image_dice_mean"])),
        ("spurious components / image", lambda s: _number(s["spurious_per_image"], 2)),
        ("HD95 (px)", lambda s: _number(s["hd95_mean"], 1)),
        ("ASSD (px)", lambda s: _number(s.get("assd_mean"), 1)),
    ]
    if millimetres:
        columns += [("HD95 (mm)", lambda s: _number(s["hd95_mm_mean"], 2)),
                    ("ASSD (mm)", lambda s: _number(s["assd_mm_mean"], 2))]
    return columns + [("test frames trained on", _contamination)]


def results_table(summaries, scored_on, resolution="native", spacing=None):
    """The paper-style Markdown table, one row per experiment, and what each number means."""
    millimetres = spacing is not None and resolution == "native"
    where = ("each frame's own size" if resolution == "native" else "the model's input size")
    lines = [
        "# Results",
        "",
        f"Scored on: {scored_on}.",
        "",
        f"Per-image metrics (per-image Dice, spurious components, HD95, ASSD) at {where}"
        + (f", pixel spacing {spacing[0]:g} x {spacing[1]:g} mm (row x column)." if millimetres else "."),
        "",
    ]
    lines += markdown_table(result_columns(millimetres), summaries)
    lines += ["", "What the numbers are:", ""]
    lines += [f"- **{name}**: {text}." for name, text in (
        ("prediction", "how masks were made: plain (one model, threshold 0.5), or with a run's fold "
         "ensemble (the mean of its fold models' probabilities), flip test-time augmentation and "
         "post-processing, as lungseg-predict does with the same options; a run scored both ways "
         "shows their effect row by row"),
        ("fold Dice", METRIC_DEFINITIONS["dice"] + "; mean over folds ± sample SD (ddof 1); the paper "
         "reported np.std (ddof 0), given beside it; always at the model's input size, from the "
         "probabilities (post-processing does not change it)"),
        ("global Dice", METRIC_DEFINITIONS["dice_global"]),
        ("per-image Dice", "mean over frames of each frame's Dice of its final mask, at the "
         "resolution stated above (frames with both masks empty skipped)"),
        ("HD95, ASSD", "95th-percentile Hausdorff distance and average symmetric surface distance "
         "between the predicted and reference boundaries, in pixels at the resolution stated "
         "above, and in mm when the pixel spacing is known"),
        ("starting weights", "where a run's models started: V-Unet's VGG16 encoder (ImageNet, a "
         "weights file, random, or another V-Unet run's model), X-Unet's pre-training set, or the "
         "model of an earlier run it fine-tuned (--pretrained); a run's model is named run/stage with "
         "the first 8 hex digits of the SHA-256 of that run's config.json, and what that run started from"),
        ("stage-1 Dice", "V-Unet's decoder stage scored on the test frames when there are some, else on its "
         "hold-out (with --stage1-scope fold, each fold's own stage 1 on its fold's hold-out, the mean of "
         "them); X-Unet's on its pre-training set's hold-out (salient objects by default)"),
        ("test frames trained on", "per fold model, how many of the scored frames it trained on as the frame "
         "itself or its mirror image, in its fold or in a V-Unet stage 1 shared by every fold "
         "(--stage1-scope pool): such a score is contaminated (optimistic)"),
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


def _mean_dice_by_frame(experiment):
    values = {}
    for row in experiment.rows:
        values.setdefault(row.get("frame"), []).append(row.get("dice", math.nan))
    return {name: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan
            for name, v in values.items()}


def _spread_labels(n):
    if n == 1:
        return ["median"]
    return ["worst" if i == 0 else "best" if i == n - 1 else ("median" if 2 * i == n - 1 else f"q{round(100 * i / (n - 1))}")
            for i in range(n)]


def spread_frames(experiments, n_frames=4):
    """Frames for the overlay figure: a spread of the first experiment's per-image Dice, from
    worst through median to best, each from a different group when the groups allow, so the
    figure shows failures and successes rather than the first frames of one sequence."""
    common = set.intersection(*(set(e.predictions) for e in experiments))
    first = experiments[0]
    dice = _mean_dice_by_frame(first)
    with_ribs = [n for n in common if first.predictions[n][1].any() and not math.isnan(dice.get(n, math.nan))]
    pool = sorted(with_ribs or common, key=lambda n: (dice.get(n, math.nan) if not math.isnan(dice.get(n, math.nan))
                                                     else -1.0, n))
    if len(pool) <= n_frames:
        return pool
    targets = [round(i * (len(pool) - 1) / max(n_frames - 1, 1)) for i in range(n_frames)]
    if n_frames == 1:
        targets = [(len(pool) - 1) // 2]
    chosen, used_groups = [], set()
    for target in targets:
        order = sorted(range(len(pool)), key=lambda i: (abs(i - target), i))
        candidates = [pool[i] for i in order if pool[i] not in chosen]
        fresh = [n for n in candidates if first.groups.get(n, n) not in used_groups]
        pick = (fresh or candidates)[0]
        chosen.append(pick)
        used_groups.add(first.groups.get(pick, pick))
    return chosen


def make_figures(experiments, summaries, n_frames=4):
    """name -> Figure: overlays, training curves, box plots, and Dice against frame count."""
    result = {}
    chosen = spread_frames(experiments, n_frames)
    first = experiments[0]
    dice = _mean_dice_by_frame(first)
    result["overlays"] = figures.overlay_grid(
        [first.predictions[n][0] for n in chosen],
        [first.predictions[n][1] for n in chosen],
        {e.display_name: [e.predictions[n][2] for n in chosen] for e in experiments},
        names=[f"{n}\n({label}, Dice {dice.get(n, math.nan):.2f})"
               for n, label in zip(chosen, _spread_labels(len(chosen)))],
    )
    histories = {}
    for e in experiments:
        for stage in e.run.stages() if e.run and not e.options.active else ():
            if e.run.history_path(stage).is_file():
                histories[f"{e.label} {stage}"] = figures.read_history_csv(e.run.history_path(stage))
    if histories:
        result["training_curves"] = figures.training_curves(histories)
    result["boxplots"] = figures.metric_boxplots(
        {e.display_name: {m: [r[m] for r in e.rows] for m in ("dice", "spurious")} for e in experiments}
    )
    points = {}
    for e, s in zip(experiments, summaries):
        if e.config is not None and not e.options.active:
            dice = s["across_folds"]["dice"]
            sd = dice["sd"] if dice["sd"] is not None else float("nan")
            points.setdefault(s["model"], []).append((s["pool_frames"], dice["mean"], sd))
    if any(len({n for n, _, _ in p}) > 1 for p in points.values()):
        result["dice_vs_frames"] = figures.dice_vs_frames(points)
    return result


def write_results(out, experiments, summaries, built, source, resolution, spacing, save_masks):
    """Every file of the results folder ``out``."""
    write_text(out / "per_image.csv", per_image_csv(experiments))
    write_json(out / "summary.json", nan_to_none({
        "scored_on": source.description,
        "per_image_resolution": resolution,
        "pixel_spacing_mm": list(spacing) if spacing else None,
        "metric_definitions": METRIC_DEFINITIONS,
        "empty_mask_rule": EMPTY_MASK_RULE,
        "experiments": summaries,
    }))
    write_text(out / "results.md", results_table(summaries, source.description, resolution, spacing))
    for name, figure in built.items():
        figures.save_figure(figure, out / f"{name}.png")
    if save_masks:
        for experiment in experiments:
            for (fold, frame), mask in experiment.masks.items():
                write_image(out / "masks" / experiment.label / fold / f"{frame}.png", mask * 255)
