"""XPIE conversion: gray values for both channel orders, sizes, masks, all problems at once."""

import cv2
import numpy as np
import pytest

from lungseg.data import convert_xpie, find_pairs, load_frames
from lungseg.data.__main__ import main
from lungseg.data.io import write_image
from lungseg.errors import ConfigError, DataError

# 16 x 32 blocks of known RGB colours (their middle 16 columns are whole JPEG blocks away from
# any colour edge, so the colours survive compression), and their gray values worked out by hand: rgb = 0.299 R + 0.587 G + 0.114 B; paper swaps R and B.
COLOURS = {  # RGB: (rgb gray, paper gray)
    (255, 0, 0): (76, 29),  # 0.299 * 255 = 76.2; 0.114 * 255 = 29.1
    (0, 255, 0): (150, 150),  # 0.587 * 255 = 149.7
    (0, 0, 255): (29, 76),
    (200, 100, 50): (124, 96),  # 59.8 + 58.7 + 5.7 = 124.2; 15.0 + 58.7 + 22.8 = 96.5
}


def write_xpie(root):
    """A tiny XPIE download: a colour photograph and a gray one, each with its 0/255 mask."""
    blocks = [np.full((16, 32, 3), rgb[::-1], np.uint8) for rgb in COLOURS]  # stored as BGR
    colour = np.concatenate(blocks, axis=1)  # 16 x 128
    (root / "Images").mkdir(parents=True)
    cv2.imwrite(str(root / "Images" / "Y_E_1.jpg"), colour, [cv2.IMWRITE_JPEG_QUALITY, 100])
    mask = np.zeros((16, 128), np.uint8)
    mask[4:12, 32:96] = 255
    write_image(root / "Grounds" / "Y_E_1.png", mask)
    write_image(root / "Images" / "Y_E_2.jpg", np.full((24, 32), 90, np.uint8))
    write_image(root / "Grounds" / "Y_E_2.png", np.zeros((24, 32), np.uint8))
    return root


@pytest.mark.parametrize("order, column", [("rgb", 0), ("paper", 1)])
def test_gray_values_follow_the_channel_order(tmp_path, order, column):
    source = write_xpie(tmp_path / "XPIE")
    assert convert_xpie(source, tmp_path / "out", channel_order=order) == 2
    pairs = find_pairs(tmp_path / "out", layout="generic")
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("Y_E_1.png", "Y_E_1.png"), ("Y_E_2.png", "Y_E_2.png")
    ]
    gray = cv2.imread(str(pairs[0].image), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (16, 128)  # original size kept
    for index, expected in enumerate(COLOURS.values()):
        middle = gray[:, 32 * index + 8:32 * index + 24].astype(int)
        assert np.abs(middle - expected[column]).max() <= 1, (order, index, middle.mean())
    mask = cv2.imread(str(pairs[0].mask), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) == {0, 255} and (mask[4:12, 32:96] == 255).all()
    assert mask.sum() == 255 * 8 * 64
    assert (cv2.imread(str(pairs[1].image), cv2.IMREAD_UNCHANGED) == 90).all()  # gray stays
    frames = load_frames(pairs, (8, 8))  # the training loader reads the result
    assert frames.masks[1].sum() == 0 and frames.masks[0].any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["XPIE", "out"]  # no temporary folders


def test_size_stretches_image_and_mask_with_nearest(tmp_path):
    source = write_xpie(tmp_path / "XPIE")
    convert_xpie(source, tmp_path / "out", size=8)
    pairs = find_pairs(tmp_path / "out", layout="generic")
    for pair in pairs:
        image = cv2.imread(str(pair.image), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(pair.mask), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape == (8, 8)
        assert set(np.unique(mask)) <= {0, 255}
    mask = cv2.imread(str(pairs[0].mask), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 255  # rows 4-11 of 16 and columns 32-95 of 128, stretched to 8 x 8
    np.testing.assert_array_equal(mask, expected)


def test_every_problem_is_reported_at_once_and_nothing_is_written(tmp_path):
    source = write_xpie(tmp_path / "XPIE")
    write_image(source / "Images" / "c.jpg", np.zeros((4, 4), np.uint8))  # no mask
    (source / "Images" / "d.jpg").write_text("not an image")
    write_image(source / "Grounds" / "d.png", np.zeros((4, 4), np.uint8))
    write_image(source / "Grounds" / "e.png", np.zeros((4, 4), np.uint8))  # no image
    (source / "Images" / "f.jpg").write_bytes(b"")
    write_image(source / "Grounds" / "f.png", np.zeros((4, 4), np.uint8))
    write_image(source / "Images" / "g.jpg", np.zeros((4, 4), np.uint8))
    write_image(source / "Grounds" / "g.png", np.zeros((5, 4), np.uint8))  # other size
    with pytest.raises(DataError) as error:
        convert_xpie(source, tmp_path / "out")
    problems = error.value.problems
    expected = {
        "c.jpg": "no mask",
        "e.png": "mask without an image",
        "d.jpg": "not a readable image",
        "f.jpg": "file is empty",
        "g.png": "size 5 x 4 (height x width) differs from its image",
    }
    assert len(problems) == len(expected), problems
    for file_name, message in expected.items():
        assert any(file_name in line and message in line for line in problems), (file_name, problems)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["XPIE"]  # nothing half-written


def test_bad_folders_and_options(tmp_path):
    (tmp_path / "empty" / "Images").mkdir(parents=True)
    (tmp_path / "empty" / "Grounds").mkdir()
    with pytest.raises(DataError, match="Images: no images"):
        convert_xpie(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "Grounds").rmdir()
    with pytest.raises(DataError, match="Grounds: folder missing"):
        convert_xpie(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="XPIE folder does not exist"):
        convert_xpie(tmp_path / "nowhere", tmp_path / "out")
    source = write_xpie(tmp_path / "XPIE")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="taken: already exists"):
        convert_xpie(source, tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="channel order"):
        convert_xpie(source, tmp_path / "out", channel_order="bgr")
    with pytest.raises(ConfigError, match="size"):
        convert_xpie(source, tmp_path / "out", size=0)


def test_command_line(tmp_path, capsys):
    source = write_xpie(tmp_path / "XPIE")
    out = tmp_path / "gray"
    argv = ["xpie", str(source), "--out", str(out), "--channel-order", "paper", "--size", "8"]
    assert main([*argv, "--quiet"]) == 0
    assert "2 XPIE pairs converted to gray (paper)" in capsys.readouterr().out
    assert len(find_pairs(out, layout="generic")) == 2
    (source / "Grounds" / "Y_E_2.png").unlink()
    assert main(["xpie", str(source), "--out", str(tmp_path / "other"), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Y_E_2.jpg: no mask" in lines[0]


def test_default_is_the_authors_conversion_pixel_for_pixel(tmp_path):
    source = write_xpie(tmp_path / "XPIE")
    convert_xpie(source, tmp_path / "out")
    # XPIEpreprocess: cv2.cvtColor(cv2.imread(jpg), cv2.COLOR_RGB2GRAY), saved as PNG (lossless)
    authors = cv2.cvtColor(cv2.imread(str(source / "Images" / "Y_E_1.jpg")), cv2.COLOR_RGB2GRAY)
    ours = cv2.imread(str(tmp_path / "out" / "images" / "Y_E_1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(ours, authors)
    assert not list((tmp_path / "out").rglob("*.jpg"))
