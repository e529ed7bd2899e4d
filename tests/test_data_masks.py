"""lungseg.data.masks: masks binarised from their raw values, and one summary per set."""

import cv2
import numpy as np
import pytest

from lungseg.data.frames import Reading, load_frames
from lungseg.data.io import write_image
from lungseg.data.masks import binarize, read_mask, read_mask_stats, summarize_masks
from lungseg.data.pairs import find_pairs
from lungseg.errors import ConfigError, DataError

SHAPE = np.zeros((8, 10), np.uint8)
BLOCK = SHAPE.copy()
BLOCK[2:6, 3:8] = 1  # 20 foreground pixels


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.mark.parametrize("kind", ["uint8 0/1", "uint8 0/255", "uint16 0/1", "uint16 0/65535",
                                  "red on black", "alpha only", "white with alpha", "palette"])
def test_every_depth_and_channel_layout_reads_as_the_same_mask(tmp_path, kind):
    path = tmp_path / "mask.png"
    if kind.startswith("uint"):
        dtype = np.uint16 if kind.startswith("uint16") else np.uint8
        write_png(path, BLOCK.astype(dtype) * int(kind.split("/")[-1]))
    elif kind == "red on black":
        write_png(path, np.dstack([SHAPE, SHAPE, BLOCK * 255]))  # OpenCV's BGR
    elif kind == "alpha only":
        write_png(path, np.dstack([SHAPE, SHAPE, SHAPE, BLOCK * 255]))
    elif kind == "white with alpha":  # transparent background whose hidden colour varies
        colour = np.full((8, 10), 255, np.uint8)
        colour[0] = 0
        write_png(path, np.dstack([colour, colour, colour, BLOCK * 255]))
    else:
        from PIL import Image

        image = Image.fromarray(BLOCK, mode="P")
        image.putpalette([0, 0, 0, 40, 0, 0] + [0] * 762)  # index 1: a dark red
        image.save(path)
    mask, stats = read_mask_stats(path)
    np.testing.assert_array_equal(mask, BLOCK)
    assert stats.foreground == 20 and not stats.soft and not stats.stray and not stats.labels


def test_a_stray_value_neither_sets_the_threshold_nor_vanishes():
    raw = BLOCK.copy()
    raw[0, 0] = 255  # one stray pixel in a 0/1 mask
    mask, stats = binarize(raw, "m.png")
    np.testing.assert_array_equal(mask, raw > 0)  # not cut to the one 255 pixel
    assert (stats.level, stats.stray, stats.foreground) == (1, 1, 21)
    line = summarize_masks([stats], "masks")[0]
    assert "1 of 1 masks hold a few values above their level (1 pixels, e.g. m.png: level 1)" in line


def test_soft_edges_are_thresholded_at_half_the_level_and_summed_up_in_one_line():
    block = np.zeros((40, 40), np.uint8)
    block[10:30, 10:30] = 255
    stats = []
    for index in range(3):
        raw = block.copy()
        raw[9, 10:15] = [100, 90, 80, 70, 60]  # anti-aliased edge: under half of 255
        raw[30, 10:15] = [200, 210, 220, 230, 240]  # over half
        mask, found = binarize(raw, f"m{index}.png")
        expected = block // 255
        expected[30, 10:15] = 1
        np.testing.assert_array_equal(mask, expected)
        stats.append(found)
    lines = summarize_masks(stats, "masks")
    assert len(lines) == 1  # one line for the set, not one per file
    assert lines[0] == ("masks: 3 of 3 masks are not two-valued (anti-aliased or compressed edges, "
                        "0.62% of all mask pixels between 0 and the mask's level, e.g. m0.png): "
                        "thresholded at "
                        "half their level; --mask-threshold changes it")
    np.testing.assert_array_equal(binarize(raw, threshold=0.3)[0][9, 10:15], [1, 1, 1, 0, 0])


def test_a_soft_map_is_refused_unless_a_threshold_is_given():
    ramp = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (12, 1))
    with pytest.raises(DataError, match=r"p\.png: mask is not binary: .* its level 210 "
                       r"\(thresholded at 105, half the level\); give --mask-threshold"):
        binarize(ramp, "p.png")
    mask, _ = binarize(ramp, "p.png", threshold=0.25)
    np.testing.assert_array_equal(mask[0], ramp[0] > 52.5)
    with pytest.raises(ConfigError, match="--mask-threshold must be between 0 and 1"):
        binarize(ramp, threshold=1.5)


def test_label_maps_read_every_label_and_are_named_once_per_set():
    raw = np.zeros((8, 10), np.uint8)
    raw[1:4, 1:4], raw[5:7, 5:9] = 1, 2
    mask, stats = binarize(raw, "labels.png")
    np.testing.assert_array_equal(mask, raw > 0)
    assert stats.labels == (0, 1, 2)
    lines = summarize_masks([stats, stats], "masks")
    assert lines == ["masks: 2 of 2 masks look like label maps (values 0, 1, 2 in labels.png): "
                     "every nonzero label read as foreground; give one mask per target "
                     "(--target NAME for masks/NAME/)"]
    classes = np.where(raw == 2, 255, raw * 128).astype(np.uint8)  # 0/128/255
    assert binarize(classes)[1].labels == (0, 128, 255)


def test_a_set_of_empty_masks_is_refused(tmp_path):
    empty = binarize(np.zeros((4, 4), np.uint16), "e.png")[1]
    with pytest.raises(DataError, match=r"masks: all 2 masks are empty \(no foreground pixel, "
                       "every value 0\\): nothing to learn or score"):
        summarize_masks([empty, empty], "masks")
    for name in ("a", "b"):
        write_image(tmp_path / "images" / f"{name}.png", np.full((4, 4), 90, np.uint8))
        write_image(tmp_path / "masks" / f"{name}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="masks: all 2 masks are empty"):
        load_frames(find_pairs(tmp_path), (4, 4))


def test_sixteen_bit_zero_one_masks_train_as_masks(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / "images" / f"{name}.png", np.full((8, 10), 90, np.uint8))
        write_png(tmp_path / "masks" / f"{name}.png", BLOCK.astype(np.uint16))
    frames = load_frames(find_pairs(tmp_path), (8, 10), reading=Reading())
    assert frames.masks.sum() == 40 and frames.notes == ()
    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "a.png"), BLOCK)
