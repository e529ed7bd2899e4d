"""What is scored: experiments (a run folder, a ``.keras`` file or a folder of masks), how
their masks are made (:class:`PredictionOptions`), test lists, and the frames each model is
scored on (:class:`FrameSource`). Nothing here scores or writes."""

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

from lungseg.data import run_frames
from lungseg.data.frames import FLIP_SUFFIX
from lungseg.errors import ConfigError, DataError
from lungseg.postprocess import PostProcess
from lungseg.runs import RunFolder, display_name


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
    """One RUN argument: a run folder (its fold models), a single ``.keras`` file, or a folder
    of predicted masks (``model`` "masks"). What scoring it gives is a separate record
    (``lungseg.report.scores.Scored``)."""

    label: str
    model: str  # "vunet", "xunet", "model" (a bare .keras file) or "masks"
    models: dict  # fold name -> model path
    run: RunFolder = None
    training: dict = None  # the run's summary.json, if any
    options: PredictionOptions = PredictionOptions()
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
        return dataclasses.replace(self, label=f"{self.label}+{options.suffix()}",
                                   models=dict(self.models), options=options)


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
    models = run.fold_models(allow_partial, doing="scoring")
    return Experiment(label=run.label, model=run.config.model, models=models, run=run,
                      training=run.read_summary())


def open_mask_folder(path, options=PredictionOptions()):
    """An Experiment scoring a folder of predicted masks (any tool's) without a model; its
    masks are post-processed as ``options`` say."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a folder of predicted masks")
    return Experiment(label=path.name, model="masks", models={}, mask_folder=path, options=options)


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


MASK_NAME_FORMS = ("{}", "{}_mask", "mask_{}")


def mask_stems(pair):
    """The file stems a predicted mask of ``pair`` may have: each of ``MASK_NAME_FORMS`` of the
    pair's name and of its image file's stem, so that what ``lungseg-predict`` writes for the
    image (``img_<name>_mask.png`` in the paper's layout) is found as well as ``<name>.png``."""
    stems = [form.format(base) for base in (pair.name, pair.image.stem) for form in MASK_NAME_FORMS]
    return list(dict.fromkeys(stems))


def mask_files(folder):
    """{stem: file} of the image files below ``folder`` (the first of each stem, by path)."""
    from lungseg.data.io import IMAGE_SUFFIXES

    files = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
            files.setdefault(file.stem, file)
    return files
