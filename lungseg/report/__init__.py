"""Score trained runs and write the results folder: per-image metrics, tables, figures.

``evaluate.py`` is a command line over :func:`evaluate`, which runs three steps, each in its
own module: what is scored (``experiments``: runs, mask folders, test lists, frame sources),
scoring that returns results (``scores``), and writing the results (``writing``).
What each model is scored on:

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
without any model (``masks``), through ``lungseg.scoring.score_masks``.

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

from pathlib import Path

from lungseg.console import log
from lungseg.errors import ConfigError, DataError
from lungseg.files import written_whole
from lungseg.predict import DEFAULT_BATCH_SIZE
from lungseg.report.experiments import (
    Experiment,
    FrameSource,
    PredictionOptions,
    open_experiment,
    open_mask_folder,
    read_test_list,
    trained_on,
)
from lungseg.report.scores import Scored, per_image_rows, score
from lungseg.report.writing import (
    experiment_summary,
    make_figures,
    result_columns,
    results_table,
    spread_frames,
    write_results,
)
from lungseg.runs import check_output_folder

__all__ = ["Experiment", "FrameSource", "PredictionOptions", "RESOLUTIONS", "Scored", "evaluate",
           "experiment_summary", "make_figures", "open_experiment", "open_mask_folder",
           "per_image_rows", "read_test_list", "result_columns", "results_table", "score",
           "spread_frames", "trained_on", "write_results"]

RESOLUTIONS = ("native", "model")


def evaluate(runs, out, test=None, test_list=None, batch_size=DEFAULT_BATCH_SIZE, n_frames=4,
             save_masks=False, resolution="native", spacing=None, options=PredictionOptions(),
             masks=(), target=None, mask_threshold=None, max_value=None, allow_partial=False):
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
    _check_request(runs, out, test, test_list, resolution, options, masks)
    source = FrameSource(test, test_list, native=resolution == "native", target=target,
                         mask_threshold=mask_threshold, max_value=max_value)
    experiments = _experiments(runs, masks, options, allow_partial)
    log(f"scoring {len(experiments)} experiment(s) on {source.description}")
    scored = [score(experiment, source, batch_size, resolution, spacing) for experiment in experiments]
    summaries = [experiment_summary(s) for s in scored]
    built = make_figures(scored, summaries, n_frames)

    with written_whole(out) as folder:
        write_results(folder, scored, summaries, built, source, resolution, spacing, save_masks)
    table = results_table(summaries, source.description, resolution, spacing)
    log(table)
    log(f"results: {out / 'results.md'}, per-image metrics: {out / 'per_image.csv'}, "
        f"figures: {', '.join(str(out / f'{n}.png') for n in built)}")
    return summaries


def _check_request(runs, out, test, test_list, resolution, options, masks):
    """Refuse, before anything is read, an output folder that cannot be written whole and
    options that do not go together."""
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


def _experiments(runs, masks, options, allow_partial):
    """Every row of the results table: each run (and each again with ``options`` when they
    change anything), then each mask folder (post-processed as ``options`` say)."""
    experiments = [open_experiment(path, allow_partial) for path in runs]
    if options.active:
        experiments = [variant for e in experiments for variant in (e, e.with_options(options))]
    experiments += [open_mask_folder(path, PredictionOptions(post=options.post)) for path in masks]
    labels = [e.label for e in experiments]
    if len(set(labels)) != len(labels):
        raise DataError(f"two runs share a name ({', '.join(labels)}); results would mix")
    return experiments
