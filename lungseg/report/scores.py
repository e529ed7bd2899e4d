"""Scoring that returns results: every model of an experiment (or its mask folder) scored on
its frames, one :class:`Scored` record per experiment. The numbers come from
``lungseg.scoring`` (the stage runner's own path); the per-image rows at each frame's own size
(or the model's) from ``lungseg.evaluation.image_metrics``."""

import contextlib
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from lungseg.console import log
from lungseg.data.crop import to_native
from lungseg.errors import ConfigError, DataError
from lungseg.evaluation import image_metrics, notebook_order
from lungseg.model_files import input_size, load_model
from lungseg.postprocess import PostProcess
from lungseg.predict import DEFAULT_BATCH_SIZE, DEFAULT_THRESHOLD
from lungseg.report.experiments import Experiment, mask_files, mask_stems, trained_on
from lungseg.scoring import score_frames, score_masks


@dataclass
class Scored:
    """What scoring one :class:`Experiment` gave; the experiment's own fields (``label``,
    ``model``, ``run``, ``config``, ``options``, ``display_name`` ...) read through."""

    experiment: Experiment
    rows: list = field(default_factory=list)  # per-image rows: experiment, model, fold, frame, metrics
    fold_metrics: dict = field(default_factory=dict)  # fold name -> lungseg.scoring metrics
    trained_on_test: dict = field(default_factory=dict)  # fold name -> test frames it trained on
    stage1_metrics: dict = None  # stage 1 scored on the test frames, when there are some
    splits: dict = None  # the run's splits.json, read once (None without a run folder)
    predictions: dict = field(default_factory=dict)  # frame name -> (image, reference, mask)
    masks: dict = field(default_factory=dict)  # (fold, frame name) -> predicted mask
    groups: dict = field(default_factory=dict)  # frame name -> its group (for the figure)

    def __getattr__(self, name):
        if name == "experiment":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.experiment, name)


def score(experiment, source, batch_size=DEFAULT_BATCH_SIZE, resolution="native", spacing=None):
    """Score every model of ``experiment`` on its frames (``source``), one model at a time;
    a :class:`Scored`."""
    if experiment.model == "masks":
        return score_mask_folder(experiment, source, spacing)
    expected = tuple(experiment.config.image_size) if experiment.config else None
    splits = experiment.run.read_splits() if experiment.run else None
    scored = Scored(experiment, splits=splits)
    with quiet_retracing():
        for fold, path in _models_to_score(experiment, source).items():
            _score_model(scored, source, fold, path, expected, splits, batch_size, resolution, spacing)
    return scored


def _models_to_score(experiment, source):
    """Fold name -> model path (``"ensemble"`` -> every fold's path): the fold models, their
    ensemble, and a V-Unet's stage 1 when the frames are fixed (the paper's stage-1 Dice)."""
    options = experiment.options
    models = dict(experiment.models)
    if options.ensemble:
        return {"ensemble": list(models.values())}
    if source.fixed() and experiment.run and experiment.model == "vunet" and experiment.run.is_done("stage1") \
            and not options.active:
        return {"stage1": experiment.run.model_path("stage1"), **models}
    return models


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


def _training_names(splits, fold):
    """The frames of the run's pool that the model ``fold`` trained on: its fold's training
    part and, for a V-Unet whose folds all fine-tune one stage 1 (``--stage1-scope pool``),
    stage 1's training part too, which holds most of every fold's held-out frames."""
    stage1 = splits["stage1"]["train"] if "stage1" in splits else []
    if fold == "stage1":
        return stage1
    return splits["folds"][int(fold.split("_")[1]) - 1]["train"] + stage1


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


def _score_model(scored, source, fold, path, expected, splits, batch_size, resolution, spacing):
    """Score the model at ``path`` (a list: the ensemble) as ``fold`` and add its numbers,
    rows, masks and shown frames to ``scored``."""
    experiment = scored.experiment
    model = _load_scored_model(path, experiment.options)
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
    if splits and fold != "ensemble" and not source.test:  # frames of the run's own pool
        seen = trained_on(frames.names, _training_names(splits, fold))
        if seen or source.test_names:  # a fold's held-out frames: only when some were trained on
            scored.trained_on_test[fold] = seen
    if fold == "stage1":
        scored.stage1_metrics = scores.metrics
        log(f"{experiment.display_name} stage 1: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}")
        return
    scored.fold_metrics[fold] = scores.metrics
    rows, masks = per_image_rows(frames, scores.probabilities, resolution, experiment.options.post, spacing)
    for index, (row, mask, group) in enumerate(zip(rows, masks, frames.groups)):
        scored.rows.append({"experiment": experiment.label, "model": experiment.model, "fold": fold, **row})
        scored.masks[fold, row["frame"]] = mask
        scored.groups[row["frame"]] = group
        if row["frame"] not in scored.predictions:
            scored.predictions[row["frame"]] = (*_shown(frames, index), mask)
    note = ""
    if fold in scored.trained_on_test:
        note = f"; it trained on {scored.trained_on_test[fold]} of them (contaminated)"
    log(f"{experiment.display_name} {fold}: {len(frames)} frames, Dice {scores.metrics['dice']:.4f}{note}")


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


def score_mask_folder(experiment, source, spacing=None):
    """Score predicted mask files against the test set's references, at the references' size,
    through ``lungseg.scoring.score_masks`` (the numbers a model's masks get); a :class:`Scored`.

    The mask of frame ``<name>`` is ``<name>``, ``<name>_mask`` or ``mask_<name>``, or one of
    those of its image's stem (``lungseg-predict`` on ``IMG/img_<name>.tif`` writes
    ``img_<name>_mask.png``), with any image suffix, anywhere below the folder.
    """
    from lungseg.data.io import read_image

    pairs, references, predictions = _read_mask_folder(experiment, source)
    scores = score_masks([pair.name for pair in pairs], references,
                         [experiment.options.post(prediction) for prediction in predictions], spacing)
    scored = Scored(experiment, fold_metrics={"masks": scores.metrics})
    for pair, row, mask in zip(pairs, scores.rows, scores.masks):
        scored.rows.append({"experiment": experiment.label, "model": "masks", "fold": "masks", **row})
        scored.masks["masks", pair.name] = mask
        scored.groups[pair.name] = pair.group
    for pair, reference, mask in zip(pairs, references, scores.masks):
        scored.predictions[pair.name] = (read_image(pair.image), reference, mask)
    log(f"{experiment.display_name}: {len(pairs)} frames, Dice {scores.metrics['dice']:.4f}")
    return scored


def _read_mask_folder(experiment, source):
    """The test pairs that have a mask in the folder, their references and the masks, each of
    its reference's size; ``DataError`` listing every frame without a usable mask."""
    from lungseg.data import find_pairs
    from lungseg.data.masks import read_mask

    if not source.test:
        raise ConfigError(f"{experiment.mask_folder}: a folder of masks is scored against --test DIR")
    files = mask_files(experiment.mask_folder)
    problems, found_pairs, references, predictions = [], [], [], []
    for pair in find_pairs(source.test, target=source.target, warn_groups=False):
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
        found_pairs.append(pair)
        references.append(reference)
        predictions.append(prediction)
    if problems:
        raise DataError(problems)
    return found_pairs, references, predictions
