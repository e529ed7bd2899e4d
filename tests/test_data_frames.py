"""load_frames checks and resizes; FrameSet subsets and mirror images; the paper's set sizes."""

import numpy as np
import pytest

from lungseg.data import FrameSet, Pair, find_pairs, load_frames, select_lus_frames
from lungseg.data.frames import unused_frames
from lungseg.data.io import write_image
from lungseg.errors import ConfigError, DataError


def frame(height=12, width=8, value=100):
    image = np.full((height, width), value, np.uint8)
    image[: height // 2] = 200  # top half brighter: resizing and flips can be checked
    return image


def rib_mask(height=12, width=8):
    mask = np.zeros((height, width), np.uint8)
    mask[2:5, : width // 2] = 255
    return mask


def write_pair(root, name, image, mask):
    write_image(root / "IMG" / f"img_{name}.tif", image)
    write_image(root / "MASK" / f"mask_{name}.tif", mask)


def test_frames_are_resized_once_to_uint8_arrays(tmp_path):
    for index in (5, 10, 15):
        write_pair(tmp_path, f"lung_pos2_{index}", frame(), rib_mask())
    frames = load_frames(find_pairs(tmp_path), (24, 16))
    assert len(frames) == 3 and frames.image_size == (24, 16)
    assert frames.images.shape == frames.masks.shape == (3, 24, 16, 1)
    assert frames.images.dtype == frames.masks.dtype == np.uint8
    assert set(np.unique(frames.images)) == {100, 200}  # nearest: no new grey levels
    assert set(np.unique(frames.masks)) == {0, 1}
    assert frames.masks[0, 4:10, :8].all() and not frames.masks[0, :, 8:].any()
    assert frames.names == ["lung_pos2_5", "lung_pos2_10", "lung_pos2_15"]
    assert frames.groups == ["lung_pos2:0-49"] * 3
    smooth = load_frames(find_pairs(tmp_path), (5, 5), interpolation="area")
    assert len(np.unique(smooth.images)) > 2
    with pytest.raises(ConfigError, match="unknown interpolation"):
        load_frames(find_pairs(tmp_path), (8, 8), interpolation="cubic")


def test_all_bad_files_are_reported_together(tmp_path):
    write_pair(tmp_path, "good", frame(), rib_mask())
    write_pair(tmp_path, "mismatch", frame(), rib_mask(height=10))
    grey_mask = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (12, 1))
    write_pair(tmp_path, "grey", frame(), grey_mask)
    write_image(tmp_path / "MASK" / "mask_empty.tif", rib_mask())
    (tmp_path / "IMG" / "img_empty.tif").write_bytes(b"")
    write_image(tmp_path / "MASK" / "mask_text.tif", rib_mask())
    (tmp_path / "IMG" / "img_text.tif").write_text("not an image")
    with pytest.raises(DataError) as error:
        load_frames(find_pairs(tmp_path), (8, 8))
    problems = error.value.problems
    assert len(problems) == 4, problems
    expected = {
        "img_empty.tif": "file is empty (0 bytes)",
        "img_text.tif": "not a readable image",
        "mask_mismatch.tif": "size 10 x 8 (height x width) differs from its image",
        "mask_grey.tif": "mask is not binary",
    }
    for file_name, message in expected.items():
        assert any(file_name in line and message in line for line in problems), (file_name, problems)
    grey_line = next(line for line in problems if "mask_grey.tif" in line)
    assert "thresholded at 105" in grey_line


def test_no_pairs_and_bad_sizes_are_refused():
    with pytest.raises(DataError, match="no image/mask pairs"):
        load_frames([], (8, 8))
    pair = Pair("a.tif", "b.tif", "a", "a")
    with pytest.raises(ConfigError, match="image_size"):
        load_frames([pair], (8,))
    with pytest.raises(ConfigError, match="positive"):
        load_frames([pair], (0, 8))


def small_set(n=4):
    images = np.arange(n * 2 * 3, dtype=np.uint8).reshape(n, 2, 3, 1)
    masks = np.zeros_like(images)
    masks[:, :, 0] = 1
    return FrameSet([f"f{i}" for i in range(n)], [f"g{i // 2}" for i in range(n)], images, masks)


def test_subset_take_and_flips():
    frames = small_set()
    chosen = frames.subset(["f3", "f0"])
    assert chosen.names == ["f3", "f0"] and chosen.groups == ["g1", "g0"]
    np.testing.assert_array_equal(chosen.images, frames.images[[3, 0]])
    with pytest.raises(DataError, match="f9: no frame of that name"):
        frames.subset(["f0", "f9"])
    assert frames.take(2).names == ["f0", "f1"]
    doubled = frames.take(2).with_flips()
    assert doubled.names == ["f0", "f1", "f0_flipped", "f1_flipped"]  # the authors' names
    assert doubled.groups == ["g0", "g0", "g0", "g0"]  # a mirror image keeps its group
    np.testing.assert_array_equal(doubled.images[2], frames.images[0][:, ::-1])
    np.testing.assert_array_equal(doubled.masks[2, :, 2], np.ones((2, 1)))
    with pytest.raises(ValueError):
        FrameSet(["a"], [], frames.images[:1], frames.masks[:1])


def test_names_without_the_papers_numbering_take_the_first_frames():
    frames = small_set(6)
    with_flips, rule = select_lus_frames(frames, 4)
    assert with_flips.names == ["f0", "f1", "f0_flipped", "f1_flipped"]
    assert rule.startswith("the first 2 of 6 frames in name order") and "mirror" in rule
    assert unused_frames(frames, 4) == 4
    without, rule = select_lus_frames(frames, 5, flips=False)
    assert without.names == ["f0", "f1", "f2", "f3", "f4"] and "mirror" not in rule
    assert unused_frames(frames, 5, flips=False) == 1 and unused_frames(frames, 12) == 0
    assert select_lus_frames(frames, 6, flips=False)[1] == "all 6 frames"
    with pytest.raises(DataError, match="need 7 original frames, but the data set has only 6"):
        select_lus_frames(frames, 14)
    with pytest.raises(ConfigError, match="even"):
        select_lus_frames(frames, 3)


def test_all_frames_are_every_frame_with_or_without_mirror_images():
    frames = small_set(3)
    everything, rule = select_lus_frames(frames, "all")
    assert everything.names == ["f0", "f1", "f2", "f0_flipped", "f1_flipped", "f2_flipped"]
    assert rule == "all 3 frames and their mirror images"
    originals, rule = select_lus_frames(frames, "all", flips=False)
    assert originals.names == ["f0", "f1", "f2"] and rule == "all 3 frames"
    assert unused_frames(frames, "all") == 0
    with pytest.raises(ConfigError, match="a positive integer or 'all', got 'some'"):
        select_lus_frames(frames, "some")


def named_set(numbers_by_position):
    """A FrameSet of 1 x 1 frames called lung_pos<P>_<n>, in the natural sort order."""
    names = [f"lung_pos{p}_{n}" for p, numbers in numbers_by_position.items() for n in numbers]
    images = np.zeros((len(names), 1, 1, 1), np.uint8)
    return FrameSet(names, names, images, images.copy())


def paper_names(positions=(2, 3), last=50):
    return [
        f"lung_pos{p}_{h + n}" for p in positions for h in range(0, 1000, 100)
        for n in range(5, last + 1, 5)
    ]


def test_the_paper_numbering_chooses_the_papers_frames():
    every_5th = named_set({2: range(5, 1000, 5), 3: range(5, 1000, 5)})  # 199 per position
    chosen, rule = select_lus_frames(every_5th, 400)
    assert chosen.names[:200] == paper_names(last=50)  # pos2_5 .. pos2_950, pos3_5 .. pos3_950
    assert chosen.names[200:] == [name + "_flipped" for name in paper_names(last=50)]
    assert rule.startswith("the paper's 200-frame set") and "pos2 100, pos3 100" in rule
    assert select_lus_frames(every_5th, 200, flips=False)[0].names == paper_names(last=50)
    chosen, rule = select_lus_frames(every_5th, 600)
    assert chosen.names[:300] == paper_names(last=75) and "300-frame set" in rule
    # Fewer than the set holds: an equal share per probe position, lowest frame numbers first.
    chosen, rule = select_lus_frames(every_5th, 42)
    pos2 = [f"lung_pos2_{n}" for n in (*range(5, 51, 5), 105)]
    assert chosen.names[:21] == pos2 + [f"lung_pos3_{n}" for n in range(5, 51, 5)]
    assert "21 frames numbered as the paper's 200-frame set" in rule and "pos2 11, pos3 10" in rule


def test_a_short_probe_position_leaves_its_share_to_the_others():
    frames = named_set({2: range(5, 51, 5), 3: (5, 10)})
    chosen, rule = select_lus_frames(frames, 8, flips=False)
    pos2 = [f"lung_pos2_{n}" for n in range(5, 31, 5)]
    assert chosen.names == pos2 + ["lung_pos3_5", "lung_pos3_10"]
    assert "pos2 6, pos3 2" in rule


def test_frames_missing_from_the_papers_set_are_counted():
    frames = named_set({2: range(5, 1000, 5), 3: range(5, 800, 5)})  # pos3 stops at 795
    expected = r"need 200 original frames from the paper's 200-frame set .* 180 of them: 20 missing"
    with pytest.raises(DataError, match=expected):
        select_lus_frames(frames, 400)
    with pytest.raises(DataError, match="need 300 original frames .* 300-frame set .* 30 missing"):
        select_lus_frames(frames, 600)
