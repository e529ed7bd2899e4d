"""Score trained runs and write the results folder: per-image metrics, tables, figures.

``evaluate.py`` is a command line over :func:`evaluate`. What each model is scored on:

* by default, each fold model on its own held-out fold (the frames of ``splits.json``);
* ``test``: every model on the same frames of a separate folder;
* ``test_list``: every model on frames of its run's pool named in a CSV, flipped copies
  included, as the paper's ``Default_testset.csv`` (its scores are contaminated where a model
  trained on a listed frame or its mirror image, and the report says how many).

Every model is scored by ``lungseg.scoring.score_frames`` at its own input resolution, the
very function the stage runner used, so a fold scored on its held-out frames here reports the
Dice its ``summary.json`` holds (``fold_metrics``). The per-image metrics (``per_image.csv``,
the per-image columns of ``results.md``) are measured at each frame's own size by default
(``resolution="model"`` for the model's input size), with HD95 and ASSD also in mm when the
pixel spacing is given. A folder of masks made by another tool is scored the same way,
without any model (``masks``).

Prediction options (a run's fold ensemble, flip TTA, post-processing) are scored beside the
plain models: each run appears twice in the table, as it is and with the options, so their
effect on Dice, spurious components and HD95 is read off directly.

Results folder::

    per_image.csv   one row per (model, frame) with every metric of lungseg.evaluation
    summary.json    per experiment: training summary, per-fold metrics, per-image means
    results.md      the paper-style table
    overlays.png  training_curves.png  boxplots.png  [dice_vs_frames.png]
    masks/<run>/<fold>/<frame>.png   predicted masks (with --save-masks)
"""

import contextlib
import csv
import dataclasses
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lungseg import figures
from lungseg.data import run_frames
from lungseg.console import log, warn
from lungseg.data.crop import to_native
from lungseg.data.frames import FLIP_SUFFIX
from lungseg.data.io import write_image
from lungseg.errors import ConfigError, DataError
from lungseg.evaluation import (
    EMPTY_MASK_RULE,
    METRICS,
    aggregate_folds,
    binary_set_metrics,
    image_metrics,
    nan_to_none,
    notebook_order,
    summarize,
)
from lungseg.postprocess import PostProcess
from lungseg.files import check_output_folder, write_json, write_text, written_whole
from lungseg.markdown import markdown_table
from lungseg.predict import DEFAULT_THRESHOLD, input_size, load_model
from lungseg.runs import RunFolder, display_name
from lungseg.scoring import METRIC_DEFINITIONS, score_frames

SCORES = ("dice", "dice_global", "dice_per_image")
RESOLUTIONS = ("native", "model")


@dataclass(frozen=True)
class PredictionOptions:
    """How masks are made from the models: as ``lungseg-predict`` does with the same options."""

    ensemble: bool = False  # the mean of a run's fold models, scored as one model
    tta: str = "none"
    post: PostProcess = PostProcess()

    @property
    def active(self):
        return self.ensemble or self.tta != "none" or self.post.active

    def describe(self):
        parts = (["fold ensemble"] if self.ensemble else []) + (["flip TTA"] if self.tta == "flip" else [])
        if self.post.active:
            parts.append(self.post.describe())
        return "; ".join(parts) or "plain"

    def suffix(self):
        parts = (["ensemble"] if self.ensemble else []) + (["flip"] if self.tta == "flip" else [])
        if self.post.min_size:
            parts.append(f"min{self.post.min_size}")
        if self.post.keep_largest is not None:
            parts.append(f"largest{self.post.keep_largest}")
        return "+".join(parts)


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
    options: PredictionOptions = PredictionOptions()
    groups: dict = field(default_factory=dict)  # frame name -> its group (for the figure)
    mask_folder: Path = None  # a folder of predicted masks (model "masks")

    @property
    def config(self):
        return self.run.config if self.run else None

    @property
    def display_name(self):
        if self.model == "masks":
            return f"masks ({self.label})"
        encoder = (self.training or {}).get("encoder_weights_used")
        return f"{display_name(self.model, encoder)} ({self.label})"

    def with_options(self, options):
        """The same models, predicted with ``options``: a second row of the table."""
        return Experiment(label=f"{self.label}+{options.suffix()}", model=self.model,
                          models=dict(self.models), run=self.run, training=self.training,
                          options=options)


def open_experiment(path, allow_partial=False):
    """An Experiment for a run folder or a ``.keras`` file; DataError when it is neither, or
    an unfinished run without ``allow_partial`` (then its finished folds)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix != ".keras":
            raise DataError(f"{path}: not a run folder or a .keras model file")
        return Experiment(label=path.stem if path.stem != "model" else path.parent.name,
                          model="model", models={"model": path})
    run = RunFolder.open(path)
    models = {fold: run.model_path(fold) for fold in run.check_finished(allow_partial)}
    if run.missing_folds():
        warn(f"{path}: unfinished run: scoring {len(models)} of {run.config.folds} folds "
             f"({', '.join(run.missing_folds())} missing; --allow-partial)")
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

    def __init__(self, test=None, test_list=None, native=False, target=None, mask_threshold=None,
                 max_value=None):
        if test and test_list:
            raise ConfigError("give --test or --test-list, not both")
        self.test, self.test_names = test, read_test_list(test_list) if test_list else None
        self.test_list = test_list
        self.native = native  # also keep each mask at its frame's own size
        # How --test is read (default: as each run read its data); frames are placed (crop,
        # keep_aspect) as each run's training placed them.
        self.target, self.mask_threshold, self.max_value = target, mask_threshold, max_value
        self._cache = {}

    def test_reading(self, experiment):
        """``(target, Reading)`` of the test set for ``experiment``'s models."""
        from lungseg.data.frames import Reading

        config = experiment.config
        reading = Reading.of(config) if config is not None else Reading()
        changes = {k: v for k, v in (("mask_threshold", self.mask_threshold),
                                     ("max_value", self.max_value)) if v is not None}
        target = self.target or getattr(config, "target", None)
        return target, dataclasses.replace(reading, **changes)

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
            target, reading = self.test_reading(experiment)
            key = (shape, target, reading)
            if key not in self._cache:
                from lungseg.data import find_pairs, load_frames

                pairs = find_pairs(self.test, target=target, warn_groups=False)
                self._cache[key] = load_frames(pairs, shape, progress=True, native=self.native,
                                               reading=reading)
            return self._cache[key]
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
            return run_frames.lus_frames(run, native=self.native)[0]
        everything = run_frames.all_lus_frames(run, native=self.native)
        missing = [name for name in self.test_names if name not in set(everything.names)]
        if missing:
            raise DataError([f"{self.test_list}: frame {name} is not in the data of {run.root}" for name in missing])
        return everything


def _load_scored_model(paths, options):
    """The model a row is scored with: one fold model, or the ensemble, with TTA as asked."""
    from lungseg.inference import ensemble  # Keras: only once a model is scored

    paths = paths if isinstance(paths, list) else [paths]
    return ensemble([load_model(path) for path in paths], tta=options.tta)


def _shown(frames, index):
    """A frame and its reference mask as the overlay figure shows them: at the frame's own
    size when it is known (a 960 x 128 frame is not drawn square), else the model's."""
    image, reference = frames.images[index, :, :, 0], frames.masks[index, :, :, 0]
    if frames.native_masks is None:
        return image, reference
    reference = frames.native_masks[index]
    height, width = reference.shape
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), reference


def per_image_rows(frames, probabilities, resolution="native", post=PostProcess(), spacing=None):
    """Per-image metric rows and final masks of predicted ``probabilities`` (maps at the
    model's size; 0/1 masks work too).

    At ``native`` resolution each map is mapped back to its frame's own size and position
    (bilinear, its crop box and padding undone, ``FrameSet.placements``), thresholded there as
    lungseg-predict does, and compared with the mask as stored; HD95 and ASSD are also given
    in mm with ``spacing``. At ``model`` resolution the comparison is at the model's input
    size, in pixels only. Post-processing applies at the resolution compared.
    """
    rows, finals = [], []
    for index, (name, probability) in enumerate(zip(frames.names, probabilities)):
        probability = np.asarray(probability, np.float32)
        if resolution == "native":
            reference = frames.native_masks[index]
            height, width = reference.shape
            if frames.placements:
                probability = to_native(probability, frames.placements[index])
            else:
                probability = cv2.resize(probability, (width, height), interpolation=cv2.INTER_LINEAR)
            row_spacing = spacing
        else:
            reference = frames.masks[index, :, :, 0]
            row_spacing = None
        mask = post((probability > DEFAULT_THRESHOLD).astype(np.uint8))
        rows.append({"frame": name, **image_metrics(reference, mask, row_spacing)})
        finals.append(mask)
    return rows, finals


def score(experiment, source, batch_size=20, resolution="native", spacing=None):
    """Score every model of the experiment on its frames and fill its rows; one model at a time."""
    if experiment.model == "masks":
        return score_mask_folder(experiment, source, resolution, spacing)
    options = experiment.options
    expected = tuple(experiment.config.image_size) if experiment.config else None
    models = dict(experiment.models)
    if options.ensemble:
        models = {"ensemble": list(models.values())}
    elif source.fixed() and experiment.run and experiment.model == "vunet" and experiment.run.is_done("stage1") \
            and not options.active:
        models = {"stage1": experiment.run.model_path("stage1"), **models}  # the paper's stage-1 Dice
    splits = experiment.run.read_splits() if experiment.run else None
    with quiet_retracing():
        _score_models(experiment, source, models, expected, splits, batch_size, resolution, spacing)


@contextlib.contextmanager
def quiet_retracing():
    """TensorFlow's logger held at ERROR while models are scored: each model loaded builds its
    own predict function, which TensorFlow reports as "retracing" from the fifth model on (a
    note meant for a function traced again and again, not for new models)."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _score_models(experiment, source, models, expected, splits, batch_size, resolution, spacing):
    """Score each of ``models`` (fold name -> model path, or paths of an ensemble); fill the rows."""
    options = experiment.options
    for fold, path in models.items():
        model = _load_scored_model(path, options)
        height, width, _ = input_size(model, str(path))
        if expected and (height, width) != expected:
            raise DataError(
                f"{path}: model takes {height}x{width} frames but its run "
                f"was trained at {expected[0]}x{expected[1]}"
            )
        frames = source.frames(experiment, fold, (height, width))
        # A test list is batched as the notebooks drew it; other frames in the order scored.
        order = notebook_order(len(frames)) if source.test_names else None
        scores = score_frames(model, frames, batch_size, order=order)
        if splits and source.test_names and fold != "ensemble":
            part = splits["stage1"] if fold == "stage1" else splits["folds"][int(fold.split("_")[1]) - 1]
            experiment.trained_on_test[fold] = trained_on(frames.names, part["train"])
        if fold == "stage1":
            experiment.stage1_metrics = scores.metrics
            log(f"{experiment.display_name} stage 1: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}")
            continue
        experiment.fold_metrics[fold] = scores.metrics
        rows, masks = per_image_rows(frames, scores.probabilities, resolution, options.post, spacing)
        for index, (row, mask, group) in enumerate(zip(rows, masks, frames.groups)):
            experiment.rows.append({"experiment": experiment.label, "model": experiment.model, "fold": fold, **row})
            experiment.masks[fold, row["frame"]] = mask
            experiment.groups[row["frame"]] = group
            if row["frame"] not in experiment.predictions:
                experiment.predictions[row["frame"]] = (*_shown(frames, index), mask)
        note = ""
        if fold in experiment.trained_on_test:
            note = f"; it trained on {experiment.trained_on_test[fold]} of them (contaminated)"
        log(f"{experiment.display_name} {fold}: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}{note}")


MASK_NAME_FORMS = ("{}", "{}_mask", "mask_{}")


def mask_stems(pair):
    """The file stems a predicted mask of ``pair`` may have: each of ``MASK_NAME_FORMS`` of the
    pair's name and of its image file's stem, so that what ``lungseg-predict`` writes for the
    image (``img_<name>_mask.png`` in the paper's layout) is found as well as ``<name>.png``."""
    stems = [form.format(base) for base in (pair.name, pair.image.stem) for form in MASK_NAME_FORMS]
    return list(dict.fromkeys(stems))


def open_mask_folder(path):
    """An Experiment scoring a folder of predicted masks (any tool's) without a model."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of predicted masks")
    return Experiment(label=path.name, model="masks", models={}, mask_folder=path)


def _mask_files(folder):
    from lungseg.data.io import IMAGE_SUFFIXES

    files = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
            files.setdefault(file.stem, file)
    return files


def score_mask_folder(experiment, source, resolution="native", spacing=None):
    """Score predicted mask files against the test set's references, at the references' size.

    The mask of frame ``<name>`` is ``<name>``, ``<name>_mask`` or ``mask_<name>``, or one of
    those of its image's stem (``lungseg-predict`` on ``IMG/img_<name>.tif`` writes
    ``img_<name>_mask.png``), with any image suffix, anywhere below the folder.
    """
    from lungseg.data.masks import read_mask

    if not source.test:
        raise ConfigError(f"{experiment.mask_folder}: a folder of masks is scored against --test DIR")
    from lungseg.data import find_pairs

    pairs = find_pairs(source.test, target=source.target, warn_groups=False)
    files = _mask_files(experiment.mask_folder)
    problems, references, predictions, names = [], [], [], []
    for pair in pairs:
        stems = mask_stems(pair)
        found = next((files[stem] for stem in stems if stem in files), None)
        if found is None:
            problems.append(f"{experiment.mask_folder}: no mask for frame {pair.name} "
                            f"({', '.join(stems)}.png ...)")
            continue
        try:
            reference, prediction = read_mask(pair.mask, source.mask_threshold), read_mask(found)
        except DataError as error:
            problems += error.problems
            continue
        if reference.shape != prediction.shape:
            problems.append(f"{found}: size {prediction.shape[0]} x {prediction.shape[1]} differs from "
                            f"its reference {pair.mask} ({reference.shape[0]} x {reference.shape[1]})")
            continue
        references.append(reference)
        predictions.append(experiment.options.post(prediction))
        names.append(pair.name)
        experiment.groups[pair.name] = pair.group
    if problems:
        raise DataError(problems)
    metrics = binary_set_metrics(references, predictions)
    for name, reference, prediction in zip(names, references, predictions):
        row = {"frame": name, **image_metrics(reference, prediction, spacing)}
        experiment.rows.append({"experiment": experiment.label, "model": "masks", "fold": "masks", **row})
        experiment.masks["masks", name] = prediction
    image_by_name = {pair.name: pair.image for pair in pairs}
    from lungseg.data.io import read_image

    for name, reference, prediction in zip(names, references, predictions):
        experiment.predictions[name] = (read_image(image_by_name[name]), reference, prediction)
    metrics.update({
        "dice_per_image": summarize(experiment.rows)["metrics"]["dice"]["mean"],
        "frames": len(names),
    })
    experiment.fold_metrics["masks"] = metrics
    log(f"{experiment.display_name}: {len(names)} frames, Dice {metrics['dice']:.4f}")


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
        strategy = "-" if experiment.model != "masks" else f"masks from {experiment.mask_folder}"
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
        "assd_mean": metrics["assd"]["mean"],
        "hd95_mm_mean": metrics["hd95_mm"]["mean"] if "hd95_mm" in metrics else None,
        "assd_mm_mean": metrics["assd_mm"]["mean"] if "assd_mm" in metrics else None,
        "prediction": experiment.options.describe() if experiment.model != "masks" else "mask files",
        "per_image": per_image,
    }


def _number(value, digits=4):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


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
        ("stage-1 Dice", lambda s: _number(s["stage1_dice"])),
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
            points.setdefault(s["model"], []).append((e.config.lus_frames, dice["mean"], sd))
    if any(len({n for n, _, _ in p}) > 1 for p in points.values()):
        result["dice_vs_frames"] = figures.dice_vs_frames(points)
    return result


def evaluate(runs, out, test=None, test_list=None, batch_size=20, n_frames=4, save_masks=False,
             resolution="native", spacing=None, options=PredictionOptions(), masks=(),
             target=None, mask_threshold=None, max_value=None, allow_partial=False):
    """Score ``runs`` (run folders or .keras files) and ``masks`` (folders of predicted masks)
    and write the results folder ``out``.

    Per-image metrics are at each frame's own size (``resolution="native"``) or the model's
    (``"model"``); ``spacing`` (row mm, column mm) adds HD95 and ASSD in mm. With ``options``
    (:class:`PredictionOptions`) every run is scored as it is and again with them.
    ``target``, ``mask_threshold`` and ``max_value`` say how ``test`` is read (default: as each
    run read its data). Everything is scored before anything is written, so bad input leaves
    ``out`` untouched, and ``out`` is written whole beside itself and renamed into place
    (``files.written_whole``): an interruption leaves the previous results or none. An
    unfinished run is refused unless ``allow_partial``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a folder")
    check_output_folder(out, "results", "results.md", [*runs, *masks, test, test_list])
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if not runs and not masks:
        raise ConfigError("nothing to score: give run folders, .keras files or --masks folders")
    if options.ensemble and not test:
        raise ConfigError("--ensemble needs --test DIR: on held-out folds or a test list the other "
                          "fold models trained on the frames")
    source = FrameSource(test, test_list, native=resolution == "native", target=target,
                         mask_threshold=mask_threshold, max_value=max_value)
    experiments = [open_experiment(path, allow_partial) for path in runs]
    if options.active:
        experiments = [variant for e in experiments for variant in (e, e.with_options(options))]
    experiments += [open_mask_folder(path) for path in masks]
    if options.post.active:
        for e in experiments:
            if e.model == "masks":
                e.options = PredictionOptions(post=options.post)
    labels = [e.label for e in experiments]
    if len(set(labels)) != len(labels):
        raise DataError(f"two runs share a name ({', '.join(labels)}); results would mix")
    log(f"scoring {len(experiments)} experiment(s) on {source.description}")
    for experiment in experiments:
        score(experiment, source, batch_size, resolution, spacing)
    summaries = [experiment_summary(e) for e in experiments]
    built = make_figures(experiments, summaries, n_frames)

    with written_whole(out) as folder:
        _write_results(folder, experiments, summaries, built, source, resolution, spacing, save_masks)
    table = results_table(summaries, source.description, resolution, spacing)
    log(table)
    log(f"results: {out / 'results.md'}, per-image metrics: {out / 'per_image.csv'}, "
        f"figures: {', '.join(str(out / f'{n}.png') for n in built)}")
    return summaries


def _write_results(out, experiments, summaries, built, source, resolution, spacing, save_masks):
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
