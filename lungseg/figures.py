"""Figures for a reproduction report: mask overlays, training curves, metric distributions.

Every function builds and returns a ``matplotlib.figure.Figure`` without pyplot, so nothing
is shown, no global figure state leaks between calls, and any backend (Agg on a server)
works. :func:`save_figure` writes one to PNG atomically. Missing values (NaN, ``None``,
absent columns or models) leave a gap or a note in the figure instead of raising.
"""

import csv
import math
import textwrap
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from lungseg.errors import DataError
from lungseg.evaluation import image_metrics
from lungseg.files import atomic_path

REFERENCE_COLOUR = (0.0, 0.85, 0.2)  # ground truth: green
PREDICTION_COLOUR = (1.0, 0.25, 0.0)  # model masks: orange-red
OVERLAY_ALPHA = 0.45
DEFAULT_DPI = 100
# Width of an average character in units of the font size (DejaVu Sans is about 0.55; a little
# more, so that wrapped text stays inside the space it is wrapped for).
CHARACTER_WIDTH = 0.62
# A name needing more lines than this at its place is shown by a letter, with a key below.
MAX_LABEL_LINES = 3


def save_figure(fig, path, dpi=DEFAULT_DPI):
    """Write ``fig`` as PNG to ``path`` (temporary name, then rename); return the path.

    The image is ``figsize * dpi`` pixels: no tight bounding box, so sizes are predictable.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    except OSError as error:
        raise DataError(f"{path}: could not write figure ({error.strerror or error})") from error
    return path


# --- mask overlays -----------------------------------------------------------------------


def _to_unit_rgb(image):
    """A frame (gray or colour, any dtype) as float RGB in [0, 1]; NaN shown as black."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if np.issubdtype(image.dtype, np.integer):
        unit = image / float(np.iinfo(image.dtype).max)
    else:
        unit = image.astype(np.float64)
        finite = unit[np.isfinite(unit)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        if low < 0 or high > 1:
            unit = (unit - low) / (high - low or 1.0)
        unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    if unit.ndim == 2:
        unit = np.repeat(unit[:, :, None], 3, axis=2)
    return np.clip(unit[:, :, :3], 0.0, 1.0)


def _mask_at(mask, shape):
    """Binary mask resized (nearest) to ``shape`` when a model worked at another size."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, :, 0]
    if mask.dtype != bool:
        values = np.nan_to_num(mask.astype(np.float64))
        # 0/1 masks and probabilities split at 0.5, 0/255 masks at half their maximum.
        mask = values > (0.5 if values.max(initial=0) <= 1 else values.max() / 2)
    if mask.shape != tuple(shape[:2]):
        mask = cv2.resize(
            mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT
        ).astype(bool)
    return mask


def blend_mask(image, mask, colour=PREDICTION_COLOUR, alpha=OVERLAY_ALPHA):
    """The frame as uint8 RGB with ``mask`` tinted in ``colour`` (RGB, 0-1).

    The mask is resized to the frame with nearest-neighbour when the sizes differ. Used by
    the figures here and by ``lungseg-predict`` for its ``*_overlay.png`` files.
    """
    rgb = _to_unit_rgb(image)
    mask = _mask_at(mask, rgb.shape)
    rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return (rgb * 255).round().astype(np.uint8)


def _characters(inches, points):
    """How many characters of a ``points``-sized font fit in ``inches``."""
    return max(int(inches * 72 / (CHARACTER_WIDTH * points)), 4)


def _wrap(text, width):
    """``text`` on lines of at most ``width`` characters, long words (run names) broken too;
    its own line breaks are kept."""
    return "\n".join(textwrap.fill(line, width, break_long_words=True) or line
                     for line in str(text).splitlines())


def fit_labels(names, inches, points):
    """Labels for ``names`` given ``inches`` each at ``points`` size, and the key that explains them.

    Each name is wrapped to its space; when one would need more than ``MAX_LABEL_LINES``
    lines, every name is shown as a letter (A, B, ...) and the key lists ``A: name`` (None
    when the names themselves fit).
    """
    width = _characters(inches, points)
    wrapped = [_wrap(name, width) for name in names]
    if all(label.count("\n") < MAX_LABEL_LINES for label in wrapped):
        return wrapped, None
    letters = [_letter(index) for index in range(len(names))]
    return letters, [f"{letter}: {name}" for letter, name in zip(letters, names)]


def _letter(index):
    """A, B, ..., Z, AA, AB, ..."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("A") + rest) + text
    return text


KEY_POINTS = 9.0


def _key_text(key, inches):
    """The letters' key as text ``inches`` wide (None without a key), and its height in inches."""
    if not key:
        return None, 0.0
    width = _characters(inches - 0.3, KEY_POINTS)
    text = "\n".join(_wrap(entry, width) for entry in key)
    return text, (text.count("\n") + 2) * KEY_POINTS * 1.3 / 72


def _add_key(fig, text):
    """The key under the figure's axes, left-aligned (constrained layout makes room for it)."""
    if text:
        fig.supxlabel(text, x=0.01, ha="left", fontsize=KEY_POINTS, linespacing=1.3)


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _missing(ax, text):
    """Write a note in the middle of an axis whose data are missing."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.3",
        bbox={"facecolor": "white", "edgecolor": "0.6", "alpha": 0.85},
    )


TITLE_POINTS = 11.0
LABEL_POINTS = 8.5


def overlay_grid(images, reference_masks, predictions, names=None, cell_inches=2.0):
    """One row per frame: the frame, its ground truth, then each model's mask, overlaid.

    ``predictions`` maps a model name (``"V-Unet"``, ``"X-Unet"``) to one mask per frame;
    masks may be at the model's resolution and are resized to the frame for display. Each
    model cell is labelled with its Dice and number of spurious components against the
    ground truth, the two things the paper's figures compare by eye. A ``None`` reference
    or prediction (or a model list shorter than ``images``) leaves its cell with a note.
    The figure has ``len(images) * (2 + len(predictions))`` axes.
    """
    images = _items(images)
    reference_masks = _items(reference_masks)
    models = list(predictions or {})
    if not images:
        fig = Figure(figsize=(cell_inches * (2 + len(models)), cell_inches), layout="constrained")
        _missing(fig.add_subplot(), "no frames to show")
        return fig
    # Frames keep their own aspect ratio (a 960 x 128 frame is tall and narrow); a row is at
    # most 2.5 cells tall, the frame then narrower than its column.
    height, width = np.asarray(images[0]).shape[:2]
    aspect = min(max(height / width, 0.5), 2.5)
    fig, axes = _grid_figure(len(images), models, cell_inches, aspect)
    name_width = _characters(cell_inches * aspect * 0.95, LABEL_POINTS)
    for row, image in enumerate(images):
        name = names[row] if names is not None and row < len(names) else None
        _overlay_row(axes[row], image, _nth(reference_masks, row),
                     [_nth(_items(predictions[model]), row) for model in models],
                     None if name is None else _wrap(name, name_width))
    return fig


def _nth(values, index):
    """``values[index]``, or None past the end (a missing mask)."""
    return values[index] if index < len(values) else None


def _grid_figure(rows, models, cell_inches, aspect):
    """The overlay grid's figure and its ``rows`` x (2 + models) axes: the columns titled (the
    models' names shortened to fit, with a key of the full names under the figure)."""
    columns = 2 + len(models)
    titles, key = fit_labels(models, cell_inches * 0.95, TITLE_POINTS)
    key, key_height = _key_text(key, cell_inches * columns)
    fig = Figure(
        figsize=(cell_inches * columns, cell_inches * aspect * rows + key_height),
        layout="constrained",
    )
    axes = fig.subplots(rows, columns, squeeze=False)
    for column, title in enumerate(["image", "ground truth", *titles]):
        axes[0, column].set_title(title, fontsize=TITLE_POINTS)
    _add_key(fig, key)
    return fig, axes


def _overlay_row(axes, image, reference, masks, name=None):
    """One frame's row of the overlay grid: the frame (labelled ``name``), its ground truth,
    then each model's mask with its Dice and spurious components; None leaves a note."""
    rgb = _to_unit_rgb(image)
    axes[0].imshow(rgb)
    if name is not None:
        axes[0].set_ylabel(name, fontsize=LABEL_POINTS)
    if reference is None:
        axes[1].imshow(rgb)
        _missing(axes[1], "no mask")
    else:
        reference = _mask_at(reference, rgb.shape)
        axes[1].imshow(blend_mask(rgb, reference, REFERENCE_COLOUR))
    for ax, mask in zip(axes[2:], masks):
        if mask is None:
            ax.imshow(rgb)
            _missing(ax, "no prediction")
            continue
        mask = _mask_at(mask, rgb.shape)
        ax.imshow(blend_mask(rgb, mask, PREDICTION_COLOUR))
        if reference is not None:
            scores = image_metrics(reference, mask)
            dice = "n/a" if math.isnan(scores["dice"]) else f"{scores['dice']:.3f}"
            ax.set_xlabel(f"Dice {dice}, spurious {scores['spurious']}", fontsize=LABEL_POINTS)
    for ax in axes:
        _hide_ticks(ax)


# --- training curves ---------------------------------------------------------------------


def read_history_csv(path):
    """A Keras ``CSVLogger`` file as ``{column: [float, ...]}``.

    Empty or non-numeric cells (a run killed mid-write) become NaN, so a damaged log still
    plots. A missing or header-less file raises ``DataError`` naming it.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise DataError(f"{path}: empty history file (no header row)")
            columns = {name: [] for name in reader.fieldnames}
            for row in reader:
                for name in columns:
                    columns[name].append(_to_float(row.get(name)))
    except OSError as error:
        raise DataError(f"{path}: cannot read history ({error.strerror or error})") from error
    except (csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a CSV history file ({error})") from error
    return columns


def _to_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _as_columns(history):
    """Accept ``{column: values}`` or a list of row dicts (``csv.DictReader`` rows)."""
    if isinstance(history, dict):
        return {
            key: [_to_float(value) for value in _items(values)] for key, values in history.items()
        }
    columns = {}
    for row in _items(history):
        for key, value in row.items():
            columns.setdefault(key, []).append(_to_float(value))
    return columns


def _colours(count):
    """Distinct colours for up to 20 lines, repeating after that."""
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _items(values):
    """A list from a list, tuple or array; ``None`` (missing data) gives an empty list."""
    return [] if values is None else list(values)


TRAINING_PANELS = (("loss", "loss"), ("dice_coef", "Dice"))
LEGEND_CHARACTERS = 32  # a legend entry's line: long run names wrap


def training_curves(histories, figsize=(11.0, 4.5)):
    """Loss and Dice per epoch for each stage or fold: training solid, validation dashed.

    ``histories`` maps a label (``"vunet stage1"``, ``"vunet fold_1"``) to a history as
    read by :func:`read_history_csv` (or a list of row dicts). Epochs are counted from 1
    (Keras' ``CSVLogger`` writes them from 0). Two axes: loss, Dice.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(TRAINING_PANELS), squeeze=False)[0]
    labels = list(histories or {})
    colours = dict(zip(labels, _colours(len(labels))))
    plotted_labels = set()
    for ax, (column, title) in zip(axes, TRAINING_PANELS):
        plotted = False
        for label in labels:
            history = _as_columns(histories[label])
            for key, style in ((column, "-"), (f"val_{column}", "--")):
                values = np.asarray(history.get(key, []), dtype=np.float64)
                if not np.isfinite(values).any():
                    continue
                epochs = np.asarray(history.get("epoch", []), dtype=np.float64) + 1
                if epochs.shape != values.shape or not np.isfinite(epochs).all():
                    epochs = np.arange(1, values.size + 1)
                # A marker keeps a history of one or two epochs visible.
                marker = "o" if np.isfinite(values).sum() < 3 else None
                ax.plot(epochs, values, style, color=colours[label], linewidth=1.2, marker=marker)
                plotted = True
                plotted_labels.add(label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not plotted:
            _missing(ax, f"no {column} logged")
    handles = [
        Line2D([], [], color=colours[label], label=_wrap(label, LEGEND_CHARACTERS))
        for label in labels
        if label in plotted_labels
    ]
    handles += [
        Line2D([], [], color="0.3", linestyle="-", label="training"),
        Line2D([], [], color="0.3", linestyle="--", label="validation"),
    ]
    # Beside the panels, not over them: constrained layout makes room for it.
    fig.legend(handles=handles, fontsize="small", loc="outside right upper")
    return fig


# --- metric distributions ----------------------------------------------------------------


def _finite(values):
    values = np.asarray([_to_float(v) for v in _items(values)], dtype=np.float64)
    return values[np.isfinite(values)]


BOXPLOT_PANELS = (("dice", "per-image Dice"), ("spurious", "spurious components per image"))
TICK_POINTS = 9.0


def metric_boxplots(per_model, figsize=(10.0, 4.5)):
    """Box plots, one box per model, of per-image Dice and of spurious components.

    ``per_model`` maps a model name to ``{"dice": [...], "spurious": [...]}`` (per-image
    values, e.g. columns of :func:`lungseg.evaluation.image_metrics` rows). NaN values are
    dropped and the number of images left is shown under each box. Each image is also
    drawn as a point, so small test sets are not hidden behind a box. Two axes.
    """
    models = list(per_model or {})
    # Each box's label gets its share of a panel's width (about 80 % of half the figure).
    share = 0.8 * figsize[0] / len(BOXPLOT_PANELS) / max(len(models), 1)
    labels, key = fit_labels(models, share * 0.9, TICK_POINTS)
    key, key_height = _key_text(key, figsize[0])
    fig = Figure(figsize=(figsize[0], figsize[1] + key_height), layout="constrained")
    axes = fig.subplots(1, len(BOXPLOT_PANELS), squeeze=False)[0]
    _add_key(fig, key)
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for ax, (metric, title) in zip(axes, BOXPLOT_PANELS):
        data = [_finite((per_model[model] or {}).get(metric)) for model in models]
        positions = np.arange(1, len(models) + 1)
        if any(values.size for values in data):
            ax.boxplot(
                [values if values.size else [math.nan] for values in data],
                positions=positions,
                widths=0.5,
                showfliers=False,
            )
            for position, values in zip(positions, data):
                jitter = rng.uniform(-0.12, 0.12, values.size)
                ax.plot(position + jitter, values, ".", color="0.35", alpha=0.5, markersize=4)
        else:
            _missing(ax, f"no {metric} values")
        ax.set_xticks(
            positions, [f"{label}\n(n={values.size})" for label, values in zip(labels, data)],
            fontsize=TICK_POINTS,
        )
        ax.set_xlim(0.4, len(models) + 0.6)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return fig


def dice_vs_frames(points, figsize=(6.0, 4.5)):
    """Mean Dice against the number of training frames, one line per model, ± SD bars.

    ``points`` maps a model name to ``[(n_frames, mean_dice, sd), ...]`` (e.g. the 200, 400
    and 600 LUS experiments). Points are sorted by frame count; a NaN or ``None`` SD draws
    the point without a bar, a NaN mean leaves it out. One axis.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    frame_counts = set()
    models = list(points or {})
    for model, colour in zip(models, _colours(len(models))):
        rows = sorted(
            (_to_float(n), _to_float(mean), _to_float(sd)) for n, mean, sd in _items(points[model])
        )
        rows = [row for row in rows if math.isfinite(row[0]) and math.isfinite(row[1])]
        if not rows:
            continue
        n_frames, means, sds = (np.asarray(column) for column in zip(*rows))
        ax.errorbar(
            n_frames, means, yerr=np.nan_to_num(sds), marker="o", capsize=4,
            color=colour, label=model,
        )
        frame_counts.update(n_frames.tolist())
    if frame_counts:
        ax.set_xticks(sorted(frame_counts))
        ax.legend(fontsize="small")
    else:
        _missing(ax, "no results")
    ax.set_xlabel("training frames")
    ax.set_ylabel("Dice")
    ax.set_title("Dice against training set size")
    ax.grid(alpha=0.3)
    return fig
