"""Where a run's starting weights come from, and how that is recorded and told.

An earlier run's model starts a new run: X-Unet's ``--pretrained`` and V-Unet's
``--encoder-weights`` take a ``.keras`` file or a stage folder of a run folder (``RUN/fold_k``,
``RUN/pretrain``), so that a run on a phantom chains into a run on patients. The source is
recorded with the run it came from and that run's configuration digest; X-Unet's own
pre-training records its pre-training set. :func:`starting_weights` says it in words for the
training summary and evaluate's results table. Keras loads only when a model is read.
"""

from pathlib import Path

from lungseg.errors import ConfigError, LungsegError
from lungseg.model_files import load_model
from lungseg.runs import CONFIG, MODEL, RunFolder, display_name, file_sha256

RUN_SOURCE = "a .keras model file or a run's stage folder (RUN/fold_1, RUN/pretrain)"
DIGEST_SHOWN = 8  # hex digits of a configuration's SHA-256 shown in tables


def is_run_model(weights):
    """True when ``--encoder-weights`` names a model (a stage folder, a ``.keras`` file), not
    ``imagenet``, ``none`` or a VGG16 weights file (HDF5)."""
    return weights not in (None, "none", "imagenet") and Path(weights).suffix.lower() not in (".h5", ".hdf5")


def model_source(path, option):
    """The record of the model ``path`` stands for (a ``.keras`` file, or a stage folder's
    ``model.keras``): ``path``, ``model``, ``model_sha256`` and, inside a run folder, ``run``,
    ``stage``, ``run_model`` (``vunet``/``xunet``), ``run_config_sha256`` and
    ``run_started_from`` (that run's own starting weights in words, so a chain reads back to
    its first source; None when unknown). ``ConfigError`` naming ``path`` when it is missing,
    a whole run folder, or a folder without a model."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: does not exist ({option} takes {RUN_SOURCE})")
    model = path / MODEL if path.is_dir() else path
    if not model.is_file():
        raise ConfigError(_folder_problem(path, option))
    record = {"path": str(path), "model": str(model), "model_sha256": file_sha256(model)}
    run = RunFolder.containing(model)
    if run is not None:
        stage = model.resolve().parent
        record.update(run=str(run.root), stage=stage.name if stage.parent == run.root.resolve() else None,
                      run_model=run.config.model, run_config_sha256=file_sha256(run.config_path),
                      run_started_from=_started_from(run))
    return record


def _started_from(run):
    """``run``'s starting weights in words (its summary.json, else its config), or None."""
    try:
        summary = run.read_summary()
    except (LungsegError, OSError, ValueError):
        summary = None
    words = starting_weights(summary, run.config)
    return None if words == "-" else words


def _folder_problem(path, option):
    if (path / CONFIG).is_file():
        stages = sorted(model.parent.name for model in path.glob(f"*/{MODEL}"))
        example = path / (stages[-1] if stages else "fold_1")
        return (f"{path}: a run folder holds one model per stage ({', '.join(stages) or 'none finished'}); "
                f"give {option} one of them, e.g. {example}")
    return f"{path}: no {MODEL} in this folder ({option} takes {RUN_SOURCE})"


def pretrained_source(path):
    """X-Unet's ``--pretrained`` model: its record (:func:`model_source`), or ``{"path":
    "none", "model": None}`` for ``none`` (random weights, no pre-training); a model of a
    V-Unet run is refused, naming it."""
    if path == "none":
        return {"path": "none", "model": None}
    record = model_source(path, "--pretrained")
    _check_kind(record, "xunet", "--pretrained takes an X-Unet's model")
    return record


def encoder_from_run(weights, model):
    """Copy the VGG16 encoder of the V-Unet model ``weights`` (another run's) into ``model``
    (a new V-Unet); return what ``encoder_weights_used`` records: ``{"weights": "run", ...}``."""
    from lungseg.models import copy_vgg16_encoder

    record = model_source(weights, "--encoder-weights")
    _check_kind(record, "vunet", "--encoder-weights takes a V-Unet's model (its VGG16 encoder)")
    try:
        copy_vgg16_encoder(load_model(record["model"]), model)
    except ConfigError as error:
        raise ConfigError(f"{record['model']}: {error}; --encoder-weights takes a V-Unet's model") from None
    return {"weights": "run", **record}


def check_encoder_source(weights):
    """Check the V-Unet model ``weights`` now, on a small V-Unet, not after stage 1 starts."""
    from lungseg.models import build_vunet

    encoder_from_run(weights, build_vunet((32, 32, 1), encoder_weights=None))


def _check_kind(record, model, wanted):
    kind = record.get("run_model")
    if kind not in (None, model):
        raise ConfigError(f"{record['model']}: a model of the {display_name(kind)} run {record['run']}; {wanted}")


def pretraining_set(config, frames, held_out):
    """What X-Unet pre-trained on, for its ``metrics.json`` and the summary: the folder (or
    the generated composites), how many ``frames`` (``held_out`` of them for validation), and
    how they were read and split."""
    return {"source": config.salient or "generated composites", "frames": frames,
            "held_out": held_out, "target": config.salient_target, "groups": config.salient_groups,
            "split": config.salient_split}


def source_label(record):
    """``run/stage (config 1a2b3c4d), which started from: ...`` for a model of a run folder,
    else the file's path."""
    if not record.get("run"):
        return record["path"]
    where = Path(record["run"]).name + (f"/{record['stage']}" if record.get("stage") else "")
    before = f", which started from: {record['run_started_from']}" if record.get("run_started_from") else ""
    return f"{where} (config {record['run_config_sha256'][:DIGEST_SHOWN]}{before})"


def starting_weights(summary, config=None):
    """Where a run's models started from, in words (a summary.json, and its ``config`` for runs
    whose summary predates the records); ``-`` when unknown."""
    summary = summary or {}
    encoder = summary.get("encoder_weights_used")
    if encoder:
        return _encoder_words(encoder)
    if summary.get("pretrained_from"):
        source = summary["pretrained_from"]
        return "none (random weights)" if source["path"] == "none" else f"pre-trained {source_label(source)}"
    trained_on = summary.get("pretraining_set")
    if trained_on:
        source = trained_on["source"]
        name = source if source == "generated composites" else Path(source).name
        target = f" {trained_on['target']}" if trained_on.get("target") else ""
        return f"pre-trained on {name}{target} ({trained_on['frames']} frames)"
    if config is not None and config.model == "xunet":  # a run written before these records
        if config.pretrained:
            return f"pre-trained {Path(config.pretrained).name}"
        return f"pre-trained on {Path(config.salient).name if config.salient else 'generated composites'}"
    return "-"


def _encoder_words(encoder):
    kind = encoder.get("weights")
    if kind == "run":
        return f"VGG16 of {source_label(encoder)}"
    if kind == "file":
        return f"VGG16 file {Path(encoder['path']).name}"
    return {"imagenet": "ImageNet VGG16", "random": "random VGG16"}.get(kind, str(kind))
