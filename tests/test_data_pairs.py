"""find_pairs: the three layouts, every kind of bad input named, and split groups."""

from collections import Counter

import numpy as np
import pytest

from lungseg.data import LUS_FRAME_WINDOW, default_group, find_pairs
from lungseg.data.io import write_image
from lungseg.errors import ConfigError, DataError

FRAME = np.full((12, 8), 100, np.uint8)
MASK = np.zeros((12, 8), np.uint8)


def write_lus(root, names, ext=".tif"):
    for name in names:
        write_image(root / "IMG" / f"img_{name}{ext}", FRAME)
        write_image(root / "MASK" / f"mask_{name}{ext}", MASK)
    return root


def write_flat(root, stems, image_ext=".jpg", mask_ext=".png"):
    for stem in stems:
        write_image(root / "images" / f"{stem}{image_ext}", FRAME)
        write_image(root / "masks" / f"{stem}{mask_ext}", MASK)
    return root


def test_lus_layout_pairs_share_the_name_after_the_prefix(tmp_path):
    write_lus(tmp_path, ["lung_pos2_10", "lung_pos2_5", "lung_pos3_5", "lung_pos2_100"])
    pairs = find_pairs(tmp_path)  # auto-detected
    assert [p.name for p in pairs] == ["lung_pos2_5", "lung_pos2_10", "lung_pos2_100", "lung_pos3_5"]
    assert pairs[0].image == tmp_path / "IMG" / "img_lung_pos2_5.tif"
    assert pairs[0].mask == tmp_path / "MASK" / "mask_lung_pos2_5.tif"
    assert find_pairs(tmp_path, layout="lus") == pairs


def test_salient_and_generic_layouts(tmp_path):
    write_flat(tmp_path / "salient", ["b", "a"])
    pairs = find_pairs(tmp_path / "salient", layout="salient")
    assert [(p.name, p.image.suffix, p.mask.suffix) for p in pairs] == [
        ("a", ".jpg", ".png"), ("b", ".jpg", ".png")
    ]
    write_flat(tmp_path / "generic", ["x"], image_ext=".bmp", mask_ext=".tif")
    assert [p.name for p in find_pairs(tmp_path / "generic")] == ["x"]
    with pytest.raises(DataError, match=r"x\.bmp: salient layout expects \.jpg"):
        find_pairs(tmp_path / "generic", layout="salient")


def test_every_problem_is_reported_together_with_its_file(tmp_path):
    write_lus(tmp_path, ["lung_pos2_5"])
    write_image(tmp_path / "IMG" / "img_lung_pos2_10.tif", FRAME)  # no mask
    write_image(tmp_path / "MASK" / "mask_lung_pos2_15.tif", MASK)  # no image
    write_image(tmp_path / "IMG" / "frame_7.tif", FRAME)  # misnamed
    (tmp_path / "IMG" / "notes.txt").write_text("ignored")
    with pytest.raises(DataError) as error:
        find_pairs(tmp_path)
    problems = error.value.problems
    assert len(problems) == 3
    assert any("img_lung_pos2_10.tif: no mask" in line for line in problems)
    assert any("mask_lung_pos2_15.tif: mask without an image" in line for line in problems)
    assert any("frame_7.tif: name does not start with 'img_'" in line for line in problems)


def test_missing_root_empty_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "frame.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"frame.png: a file, not a data folder$"):
        find_pairs(tmp_path / "frame.png")
    (tmp_path / "frame.png").unlink()
    with pytest.raises(DataError, match="no IMG/ \\+ MASK/ folders"):
        find_pairs(tmp_path)
    (tmp_path / "IMG").mkdir()
    (tmp_path / "MASK").mkdir()
    with pytest.raises(DataError, match=r"IMG: no images"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match=r"images: folder missing"):
        find_pairs(tmp_path, layout="generic")
    with pytest.raises(ConfigError, match="unknown layout"):
        find_pairs(tmp_path, layout="xpie")


def test_two_files_with_one_name_are_a_problem(tmp_path):
    write_flat(tmp_path, ["a"])
    write_image(tmp_path / "images" / "a.png", FRAME)
    with pytest.raises(DataError, match="same name as"):
        find_pairs(tmp_path)


def test_default_groups_hold_ten_stored_frames_of_one_position():
    # The paper stored every 5th frame of a clip: a default group is 10 stored neighbours.
    names = [f"lung_pos{position}_{5 * k}" for position in (2, 3) for k in range(40)]
    groups = Counter(default_group(name) for name in names)
    assert sorted(groups.values()) == [10] * 8
    assert all(group.startswith(("lung_pos2:", "lung_pos3:")) for group in groups)
    window = default_group("lung_pos2_0").split(":")[1]
    assert window == f"0-{LUS_FRAME_WINDOW - 1}"
    assert default_group("lung_pos2_5") == "lung_pos2:0-49"
    assert default_group("lung_pos2_45") == "lung_pos2:0-49"
    assert default_group("lung_pos2_50") == "lung_pos2:50-99"
    assert default_group("lung_pos3_5") == "lung_pos3:0-49"
    assert default_group("lung_pos2_35_flipped") == default_group("lung_pos2_35")
    assert default_group("salient_0007") == "salient_0007"


def test_default_groups_are_subjects_when_names_carry_one():
    assert default_group("lung_subj03_pos2_35") == "subj03"
    assert default_group("lung_subj03_pos3_905_flipped") == "subj03"
    assert default_group("subj12_frame7") == "subj12"
    assert default_group("lung_subjA_pos2_5") == "lung_subjA_pos2:0-49"  # no number: no subject
    assert default_group("lung_nosubj3_pos2_5") == "lung_nosubj3_pos2:0-49"
    # Real sets name their subjects in other words too, in any case.
    assert [default_group(name) for name in ("patient03_frame012", "Patient_12-frame7", "CASE-07_b",
                                             "pt1_12", "Subject 4 frame 2", "volunteer2")] == [
        "patient03", "Patient_12", "CASE-07", "pt1", "Subject 4", "volunteer2"]
    assert default_group("patient_x3_frame7") == "patient_x3_frame7"  # no number after the word
    assert default_group("outpatient3_frame7") == "outpatient3_frame7"  # inside another word
    assert default_group("capture12") == "capture12"


def test_groups_from_a_pattern(tmp_path):
    write_flat(tmp_path, ["patientA_01", "patientA_02", "patientB_01"])
    pairs = find_pairs(tmp_path, groups=r"^(patient\w)_")
    assert [p.group for p in pairs] == ["patientA", "patientA", "patientB"]
    with pytest.raises(DataError) as error:
        find_pairs(tmp_path, groups=r"^(patientA)")
    assert error.value.problems == [
        f"{tmp_path / 'images' / 'patientB_01.jpg'}: group pattern '^(patientA)' does not match "
        "the name 'patientB_01'"
    ]
    with pytest.raises(ConfigError, match="invalid group pattern"):
        find_pairs(tmp_path, groups="(unclosed")


def test_groups_from_a_csv_file(tmp_path):
    write_flat(tmp_path, ["a", "b", "c"])
    table = tmp_path / "groups.csv"
    table.write_text("stem,group\na,left\nb,left\nc,right\n")
    assert [p.group for p in find_pairs(tmp_path, groups=table)] == ["left", "left", "right"]
    assert [p.group for p in find_pairs(tmp_path, groups=str(table))] == ["left", "left", "right"]
    table.write_text("a,left\nb\n")
    with pytest.raises(DataError) as error:
        find_pairs(tmp_path, groups=table)
    problems = "\n".join(error.value.problems)
    assert "groups.csv:2: expected 'stem,group'" in problems
    assert "b.jpg: name 'b' missing from groups file" in problems
    assert "c.jpg: name 'c' missing from groups file" in problems
    with pytest.raises(DataError, match="groups file does not exist"):
        find_pairs(tmp_path, groups=tmp_path / "nope.csv")


def test_default_groups_on_disk(tmp_path):
    write_lus(tmp_path, ["lung_pos2_5", "lung_pos2_55", "other"])
    assert [p.group for p in find_pairs(tmp_path)] == ["lung_pos2:0-49", "lung_pos2:50-99", "other"]


def write_targets(root, names, targets=("rib_shadow", "pleural_line"), image_folder="image"):
    """A multi-target set as such sets come: image/ + masks/<target>/."""
    mask = MASK.copy()
    mask[2:4, 2:4] = 255
    for name in names:
        write_image(root / image_folder / f"{name}.jpg", FRAME)
        for target in targets:
            write_image(root / "masks" / target / f"{name}.png", mask)
    return root


def test_a_target_chooses_one_mask_folder_of_a_multi_target_set(tmp_path):
    root = write_targets(tmp_path, ["Frame1", "Frame4"])
    pairs = find_pairs(root, target="pleural_line")
    assert [p.mask for p in pairs] == [root / "masks" / "pleural_line" / f"{n}.png"
                                       for n in ("Frame1", "Frame4")]
    assert pairs[0].image == root / "image" / "Frame1.jpg"  # image/ as well as images/
    with pytest.raises(DataError, match=r"masks: holds one folder per target \(pleural_line, "
                       r"rib_shadow\): choose one with --target NAME"):
        find_pairs(root)
    with pytest.raises(DataError, match=r"masks/ribs: no such target folder \(targets in .*masks: "
                       "pleural_line, rib_shadow"):
        find_pairs(root, target="ribs")
    with pytest.raises(ConfigError, match="--target must name one folder"):
        find_pairs(root, target="../masks")


def test_blocks_group_contiguous_frame_numbers_of_each_sequence(tmp_path):
    names = ["Frame1", "Frame4", "Frame7", "Frame10", "Frame13", "clip2_0003", "clip2_0012"]
    root = write_flat(tmp_path, names)
    groups = {p.name: p.group for p in find_pairs(root, groups="blocks:10")}
    assert groups == {"Frame1": "Frame:0-9", "Frame4": "Frame:0-9", "Frame7": "Frame:0-9",
                      "Frame10": "Frame:10-19", "Frame13": "Frame:10-19",
                      "clip2_0003": "clip2_:0-9", "clip2_0012": "clip2_:10-19"}
    for bad in ("blocks:0", "blocks:x", "blocks:"):
        with pytest.raises(ConfigError, match=f"--groups {bad}: expected blocks:N"):
            find_pairs(root, groups=bad)
    with pytest.raises(ConfigError, match="--salient-groups blocks:0: expected blocks:N"):
        find_pairs(root, groups="blocks:0", flags=("--salient-groups", "--salient-split"))
    write_flat(root, ["notes_a"])
    with pytest.raises(DataError, match=r"notes_a\.jpg: name 'notes_a' does not end in a frame "
                       "number"):
        find_pairs(root, groups="blocks:10")


def test_a_sweep_split_frame_by_frame_is_warned_about(tmp_path, caplog):
    root = write_flat(tmp_path, ["Frame1", "Frame4", "Frame7"])
    find_pairs(root)
    warnings = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
    assert len(warnings) == 1 and "3 names look like numbered frames of one sweep (Frame1, " \
        "Frame4, ...) but every frame is its own group" in warnings[0]
    assert "--groups blocks:N" in warnings[0] and "--split grouped" in warnings[0]
    caplog.clear()
    find_pairs(root, flags=("--salient-groups", "--salient-split"))  # the pre-training set's
    assert "group them with --salient-groups blocks:N (N frame numbers per group) and " \
        "--salient-split grouped" in caplog.records[-1].getMessage()
    caplog.clear()
    find_pairs(root, groups="blocks:10")
    find_pairs(root, warn_groups=False)
    write_flat(tmp_path / "other", ["a", "b", "c"])
    find_pairs(tmp_path / "other")  # names that are no sweep
    assert not [r for r in caplog.records if "sweep" in r.getMessage()]
