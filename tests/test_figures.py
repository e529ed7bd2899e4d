"""Each figure has the expected panels, survives missing data and saves a readable PNG."""

import math

import cv2
import numpy as np
import pytest
from matplotlib.figure import Figure

from lungseg.errors import DataError
from lungseg.figures import (
    blend_mask,
    dice_vs_frames,
    metric_boxplots,
    overlay_grid,
    read_history_csv,
    save_figure,
    training_curves,
)

DPI = 50


def saved_size(fig, path):
    """Save at DPI, read back, and return ((height, width) read, (height, width) expected)."""
    save_figure(fig, path, dpi=DPI)
    image = cv2.imread(str(path))
    assert image is not None, f"{path} did not read back"
    width, height = np.round(fig.get_size_inches() * DPI).astype(int)
    return image.shape[:2], (height, width)


def frames_and_masks(count=3, shape=(48, 16)):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    masks = []
    for index in range(count):
        mask = np.zeros(shape, np.uint8)
        mask[10 + index : 20 + index, 4:12] = 1
        masks.append(mask)
    return frames, masks


def test_overlay_grid_panels_and_png(tmp_path):
    frames, masks = frames_and_masks()
    predictions = {"V-Unet": masks, "X-Unet": [np.ones((32, 32), np.uint8)] * 3}
    fig = overlay_grid(frames, masks, predictions, names=["a", "b", "c"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * (2 + 2)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "V-Unet", "X-Unet"]
    assert fig.axes[2].get_xlabel() == "Dice 1.000, spurious 0"
    read, expected = saved_size(fig, tmp_path / "grid.png")
    assert read == expected


def test_overlay_grid_missing_masks_and_predictions(tmp_path):
    frames, masks = frames_and_masks()
    predictions = {"V-Unet": [masks[0], None], "X-Unet": None}  # short list, no list at all
    fig = overlay_grid(frames, [masks[0], None], predictions)
    assert len(fig.axes) == 3 * 4
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert "no mask" in texts and "no prediction" in texts
    read, expected = saved_size(fig, tmp_path / "grid.png")
    assert read == expected
    assert len(overlay_grid([], [], {"V-Unet": []}).axes) == 1


def test_blend_mask_tints_only_the_mask():
    frame = np.full((4, 6), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 2] = 1
    rgb = blend_mask(frame, mask, colour=(1.0, 0.0, 0.0), alpha=0.5)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    assert tuple(rgb[1, 2]) == (178, 50, 50)
    # A mask at another resolution (the model's) is resized to the frame.
    assert blend_mask(frame, np.ones((2, 2), np.uint8)).shape == (4, 6, 3)


CSV_LOG = """\
epoch,binary_accuracy,dice_coef,iou,loss,val_binary_accuracy,val_dice_coef,val_iou,val_loss
0,0.9,0.20,0.11,-0.20,0.91,0.25,0.14,-0.25
1,0.95,0.40,0.25,-0.40,0.95,0.42,0.27,-0.42
2,0.97,0.55,0.38,-0.55,,
"""


def test_read_history_csv(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(CSV_LOG)
    history = read_history_csv(path)
    assert history["epoch"] == [0.0, 1.0, 2.0]
    assert history["dice_coef"] == [0.20, 0.40, 0.55]
    assert history["val_dice_coef"][:2] == [0.25, 0.42]
    assert math.isnan(history["val_dice_coef"][2])  # a run killed mid-row
    assert math.isnan(history["val_loss"][2])


def test_read_history_csv_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        read_history_csv(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv.*no header"):
        read_history_csv(empty)


def test_training_curves_panels_and_png(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(CSV_LOG)
    histories = {
        "vunet stage1": read_history_csv(path),
        "vunet fold_1": [{"epoch": "0", "loss": "-0.3", "val_loss": "-0.2"}],  # row dicts
        "vunet fold_2": {"loss": [math.nan, math.nan]},  # nothing to draw
        "vunet fold_3": None,
    }
    fig = training_curves(histories)
    assert len(fig.axes) == 2
    loss_axis, dice_axis = fig.axes
    assert len(loss_axis.lines) == 4  # stage1 train + val, fold_1 train + val
    assert len(dice_axis.lines) == 2
    assert [line.get_linestyle() for line in dice_axis.lines] == ["-", "--"]
    assert list(dice_axis.lines[0].get_xdata()) == [1, 2, 3]  # epochs counted from 1
    read, expected = saved_size(fig, tmp_path / "curves.png")
    assert read == expected


def test_training_curves_without_data(tmp_path):
    fig = training_curves({})
    assert len(fig.axes) == 2
    read, expected = saved_size(fig, tmp_path / "empty.png")
    assert read == expected


def test_metric_boxplots_drop_nan(tmp_path):
    per_model = {
        "V-Unet": {"dice": [0.8, math.nan, 0.9], "spurious": [0, 2, 3]},
        "X-Unet": {"dice": np.array([0.7, 0.75]), "spurious": [0, 0]},
        "other": {"dice": [math.nan]},  # no usable values, no spurious key
        "missing": None,
    }
    fig = metric_boxplots(per_model)
    assert len(fig.axes) == 2
    labels = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert labels == ["V-Unet\n(n=2)", "X-Unet\n(n=2)", "other\n(n=0)", "missing\n(n=0)"]
    read, expected = saved_size(fig, tmp_path / "box.png")
    assert read == expected
    assert len(metric_boxplots({}).axes) == 2


def test_dice_vs_frames(tmp_path):
    points = {
        "V-Unet": [(400, 0.856, 0.003), (200, 0.779, None)],
        "X-Unet": [(400, 0.828, 0.002), (600, 0.833, math.nan), (300, math.nan, 0.1)],
        "none": None,
    }
    fig = dice_vs_frames(points)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [200, 400, 600]
    assert list(ax.lines[0].get_xdata()) == [200, 400]  # sorted by frame count
    read, expected = saved_size(fig, tmp_path / "dice.png")
    assert read == expected
    assert len(dice_vs_frames({}).axes) == 1


def test_figures_stay_out_of_pyplot(tmp_path):
    import matplotlib.pyplot as plt

    frames, masks = frames_and_masks(1)
    overlay_grid(frames, masks, {"m": masks})
    training_curves({})
    metric_boxplots({})
    dice_vs_frames({})
    assert plt.get_fignums() == []


def test_save_figure_is_atomic_and_reports_bad_paths(tmp_path):
    fig = dice_vs_frames({})
    target = tmp_path / "out" / "fig.png"
    save_figure(fig, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["fig.png"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="fig.png"):
        save_figure(fig, blocker / "fig.png")


# --- text that never collides ------------------------------------------------------------

LONG = "V-Unet (random encoder) (demo_vunet_quick_preset_with_a_long_run_name_2026)"


def text_boxes(fig):
    """(text, window extent) of every visible, non-empty text of ``fig`` once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    undrawn = set()  # labels of ticks outside an axis' view, which matplotlib does not draw
    for ax in fig.axes:
        for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    undrawn.update({id(tick.label1), id(tick.label2)})
    return [(text.get_text(), text.get_window_extent(renderer))
            for text in fig.findobj(Text)
            if text.get_visible() and text.get_text().strip() and id(text) not in undrawn]


def assert_no_text_collides(fig):
    boxes = text_boxes(fig)
    width, height = fig.get_size_inches() * fig.dpi
    for text, box in boxes:
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, \
            f"{text!r} leaves the figure: {box}"
    for index, (text, box) in enumerate(boxes):
        for other, other_box in boxes[index + 1:]:
            overlap_x = min(box.x1, other_box.x1) - max(box.x0, other_box.x0)
            overlap_y = min(box.y1, other_box.y1) - max(box.y0, other_box.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{text!r} overlaps {other!r}"
    return [text for text, _ in boxes]


MODEL_NAMES = [
    ["V-Unet", "X-Unet"],
    ["V-Unet (random encoder) (v)", "X-Unet (x)", "masks (predicted)"],
    [LONG, "X-Unet (demo_xunet_with_an_equally_long_name_for_the_test)", "masks (a_tool's_output_folder)"],
    [f"{LONG} {k}" for k in range(5)],
]


@pytest.mark.parametrize("names", MODEL_NAMES, ids=["short", "medium", "long", "five long"])
@pytest.mark.parametrize("shape", [(960, 128), (64, 64), (128, 480)], ids=["960x128", "square", "wide"])
def test_overlay_text_never_collides_and_frames_keep_their_aspect(names, shape):
    frames, masks = frames_and_masks(count=4, shape=shape)
    labels = [f"lung_pos2_{k}_flipped_with_a_long_suffix\n(worst, Dice 0.{k}1)" for k in range(4)]
    fig = overlay_grid(frames, masks, {name: masks for name in names}, names=labels)
    texts = assert_no_text_collides(fig)
    if any(len(name) > 40 for name in names):  # letters over the columns, the names in a key
        assert any(name in text.replace("\n", "") for text in texts for name in names)
        assert fig.axes[2].get_title() == "A"
    image = fig.axes[0]
    box = image.get_window_extent()
    assert box.height / box.width == pytest.approx(shape[0] / shape[1], rel=0.03)


@pytest.mark.parametrize("names", MODEL_NAMES, ids=["short", "medium", "long", "five long"])
def test_boxplot_labels_never_collide(names):
    per_model = {name: {"dice": [0.5, 0.7, 0.9], "spurious": [0, 1, 3]} for name in names}
    texts = assert_no_text_collides(metric_boxplots(per_model))
    assert sum("(n=3)" in text for text in texts) == 2 * len(names)


def test_training_curve_legend_never_collides_with_long_labels():
    history = {"epoch": [0, 1, 2], "loss": [-0.1, -0.2, -0.3], "val_loss": [-0.1, -0.15, -0.2],
               "dice_coef": [0.1, 0.2, 0.3], "val_dice_coef": [0.1, 0.15, 0.2]}
    fig = training_curves({f"{LONG} fold_{k}": history for k in range(1, 4)})
    assert_no_text_collides(fig)
