"""lungseg.data.crop: the imaging sector of a screen capture, and frames placed and mapped back."""

import cv2
import numpy as np
import pytest

from lungseg.data.crop import find_sector, nonzero_box, place, to_model, to_native
from lungseg.data.frames import Reading, load_frames
from lungseg.data.io import write_image
from lungseg.data.pairs import find_pairs

NEAREST = cv2.INTER_NEAREST_EXACT


def sector_mask(height=96, width=128):
    """A convex probe's fan: apex above the frame's top centre, radii 30-100, +-0.6 rad."""
    rows, columns = np.mgrid[:height, :width]
    radius = np.hypot(rows + 20, columns - width / 2)
    angle = np.arctan2(columns - width / 2, rows + 20)
    return (radius > 30) & (radius < 100) & (np.abs(angle) < 0.6)


def screen_capture(seed=0, height=96, width=128):
    """A sector of speckle on black, with a burnt-in label, scale dots and a thin marker line
    touching the sector; and the sector's true box."""
    sector = sector_mask(height, width)
    rng = np.random.default_rng(seed)
    frame = np.where(sector, rng.integers(20, 200, sector.shape), 0).astype(np.uint8)
    cv2.putText(frame, "10 cm", (92, 92), cv2.FONT_HERSHEY_PLAIN, 0.6, 255, 1)
    for row in range(8, 88, 10):
        cv2.circle(frame, (124, row), 1, 255, -1)  # the depth scale's dots
    cv2.line(frame, (0, 40), (12, 40), 230, 1)  # a thin mark reaching the sector's left edge
    rows, columns = np.flatnonzero(sector.any(axis=1)), np.flatnonzero(sector.any(axis=0))
    return frame, (rows[0], columns[0], rows[-1] + 1, columns[-1] + 1)


def test_sector_box_ignores_text_dots_and_lines_where_crop_to_nonzero_does_not():
    frame, truth = screen_capture()
    box = find_sector(frame)
    assert np.abs(np.subtract(box, truth)).max() <= 1, (box, truth)
    nonzero = nonzero_box(frame)
    assert nonzero[1] == 0 and nonzero[3] >= 125  # nnU-Net's box takes in the line and the dots
    area = (box[2] - box[0]) * (box[3] - box[1])
    assert area < 0.75 * (nonzero[2] - nonzero[0]) * (nonzero[3] - nonzero[1])


def test_frames_without_margins_and_black_frames_are_kept_whole():
    full = np.random.default_rng(1).integers(20, 255, (40, 30)).astype(np.uint8)
    assert find_sector(full) == (0, 0, 40, 30)
    assert find_sector(np.zeros((40, 30), np.uint8)) == (0, 0, 40, 30)


def test_placement_stretches_or_pads_and_maps_back_to_native_coordinates():
    assert place((60, 80), (20, 40)).stretched
    placement = place((60, 80), (20, 40), box=(10, 10, 50, 50), keep_aspect=True)
    assert placement.region == (0, 10, 20, 20)  # 40 x 40 box -> 20 x 20, centred in 20 x 40
    assert placement.mirrored().box == (10, 30, 50, 70)
    assert placement.mirrored().region == (0, 10, 20, 20)
    wide = place((60, 80), (20, 40), box=(10, 0, 30, 80), keep_aspect=True)
    assert wide.region == (5, 0, 10, 40)  # 20 x 80 -> 10 x 40 (scale 1/2), rows 5-14

    mask = np.zeros((60, 80), np.uint8)
    mask[20:36, 18:30] = 1  # on the box's 2-pixel grid
    model = to_model(mask, placement, NEAREST)
    assert model.shape == (20, 40)
    assert not model[:, :10].any() and not model[:, 30:].any()  # the padding
    np.testing.assert_array_equal(np.argwhere(model)[[0, -1]], [[5, 14], [12, 19]])
    np.testing.assert_array_equal(to_native(model, placement, NEAREST), mask)
    # a probability map comes back bilinear; zero outside the box
    probability = to_native(model.astype(np.float32), placement)
    assert probability.dtype == np.float32 and probability.shape == (60, 80)
    assert not probability[:10].any() and not probability[:, 50:].any()
    assert np.logical_xor(probability > 0.5, mask).sum() <= 4  # the block's corners


def test_load_frames_crops_each_frame_and_records_its_box(tmp_path):
    truths = []
    for index in range(3):
        frame, truth = screen_capture(seed=index)
        mask = np.zeros_like(frame)
        mask[50:70, 40:60] = 255
        mask[49, 40:60] = 128  # an anti-aliased edge
        write_image(tmp_path / "images" / f"Frame{index + 1}.png", frame)
        write_image(tmp_path / "masks" / "rib" / f"Frame{index + 1}.png", mask)
        truths.append(truth)
    pairs = find_pairs(tmp_path, target="rib")
    frames = load_frames(pairs, (32, 32), native=True, reading=Reading(crop="auto"))
    for placement, truth in zip(frames.placements, truths):
        assert np.abs(np.subtract(placement.box, truth)).max() <= 1
        assert placement.region == (0, 0, 32, 32) and placement.native == (96, 128)
    whole = load_frames(pairs, (32, 32), native=True)
    assert all(p.stretched for p in whole.placements)
    # cropped, the mask covers more of the input than stretched, and maps back onto itself
    assert frames.masks.sum() > 1.5 * whole.masks.sum()
    back = to_native(frames.masks[0, :, :, 0], frames.placements[0], NEAREST)
    native = frames.native_masks[0]
    assert 2 * np.sum(back & native) / (back.sum() + native.sum()) > 0.9
    assert frames.with_flips().placements[3] == frames.placements[0].mirrored()


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_placing_nothing_changes_the_stretched_frames(tmp_path, keep_aspect):
    frame = np.random.default_rng(2).integers(0, 256, (48, 48)).astype(np.uint8)
    write_image(tmp_path / "images" / "a.png", frame)
    write_image(tmp_path / "masks" / "a.png", (frame > 128).astype(np.uint8) * 255)
    frames = load_frames(find_pairs(tmp_path), (16, 16), reading=Reading(keep_aspect=keep_aspect))
    # a square frame in a square input: padding or not, the plain resize of before
    np.testing.assert_array_equal(frames.images[0, :, :, 0],
                                  cv2.resize(frame, (16, 16), interpolation=NEAREST))
