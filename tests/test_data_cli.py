"""python -m lungseg.data: generate, check, and one-line errors with exit status 2."""

import subprocess
import sys

import numpy as np

from lungseg.data import find_pairs
from lungseg.data.__main__ import main
from lungseg.data.io import write_image


def test_generates_lus_and_salient_sets(tmp_path, capsys):
    assert main(["lus", "--n", "3", "--seed", "1", "--out", str(tmp_path / "lus")]) == 0
    assert len(find_pairs(tmp_path / "lus", layout="lus")) == 3
    assert "LUS phantoms 3/3" in capsys.readouterr().err  # the progress bar
    assert main(["salient", "--n", "1", "--out", str(tmp_path / "sal"), "--quiet"]) == 0
    assert len(find_pairs(tmp_path / "sal", layout="salient")) == 1
    assert main(["check", str(tmp_path / "lus"), "--size", "64", "32", "--quiet"]) == 0
    assert "3 pairs in 2 groups, all readable" in capsys.readouterr().out


def test_generates_subjects_probes_and_targets(tmp_path, capsys):
    argv = ["lus", "--n", "4", "--subjects", "2", "--probe", "convex", "--target", "shadow",
            "--out", str(tmp_path / "c"), "--quiet"]
    assert main(argv) == 0
    assert "(seed 0, subjects 2, probe convex, target shadow)" in capsys.readouterr().out
    pairs = find_pairs(tmp_path / "c")
    assert [p.name for p in pairs][:2] == ["lung_subj01_pos2_5", "lung_subj01_pos3_5"]
    assert main(["check", str(tmp_path / "c"), "--size", "48", "64", "--quiet"]) == 0
    assert "4 pairs in 2 groups" in capsys.readouterr().out  # grouped by subject


def test_bad_output_path_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert main(["lus", "--n", "1", "--out", str(blocker / "lus"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "file.txt" in err


def test_check_reports_every_problem(tmp_path, capsys):
    pixels = np.zeros((4, 4), np.uint8)
    write_image(tmp_path / "IMG" / "img_a.tif", pixels)
    write_image(tmp_path / "IMG" / "img_b.tif", pixels)
    write_image(tmp_path / "MASK" / "mask_c.tif", pixels)
    assert main(["check", str(tmp_path), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "img_a.tif: no mask" in lines[0] and "img_b.tif: no mask" in lines[1]
    assert "mask_c.tif: mask without an image" in lines[2]
    (tmp_path / "MASK").rename(tmp_path / "elsewhere")
    assert main(["check", str(tmp_path), "--quiet"]) == 2
    assert "MASK: folder missing" in capsys.readouterr().err


def test_module_entry_point_fails_without_a_traceback(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "lungseg.data", "salient", "--n", "1", "--out", str(blocker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {blocker}: exists and is not a folder" in result.stderr


def test_check_reports_pairing_and_content_problems_in_one_run(tmp_path, capsys):
    """A missing mask, a corrupt image and a size mismatch: all three lines, exit 2."""
    frame, mask = np.full((12, 8), 90, np.uint8), np.zeros((12, 8), np.uint8)
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "IMG" / f"img_lung_pos2_{name}.tif", frame)
        write_image(tmp_path / "MASK" / f"mask_lung_pos2_{name}.tif", mask)
    (tmp_path / "MASK" / "mask_lung_pos2_a.tif").unlink()
    (tmp_path / "IMG" / "img_lung_pos2_b.tif").write_bytes(b"II*\x00 truncated")
    write_image(tmp_path / "MASK" / "mask_lung_pos2_c.tif", np.zeros((10, 8), np.uint8))
    assert main(["check", str(tmp_path), "--quiet"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "img_lung_pos2_a.tif: no mask" in lines[0]
    assert "img_lung_pos2_b.tif: not a readable image" in lines[1]
    assert "mask_lung_pos2_c.tif: size 10 x 8" in lines[2] and "differs from its image" in lines[2]


def test_entries_that_are_not_frames_are_named_as_warnings(tmp_path):
    pixels = np.zeros((4, 4), np.uint8)
    write_image(tmp_path / "IMG" / "img_a.tif", pixels)
    pixels[1, 1] = 255  # one foreground pixel: a set of empty masks is refused
    write_image(tmp_path / "MASK" / "mask_a.tif", pixels)
    (tmp_path / "IMG" / "notes.txt").write_text("scanned on Monday")
    (tmp_path / "IMG" / "img_b.gif").write_bytes(b"GIF89a")
    (tmp_path / "MASK" / "thumbnails").mkdir()
    (tmp_path / "MASK" / ".DS_Store").write_bytes(b"")
    (tmp_path / "README.txt").write_text("not in a data folder: not named")
    # A fresh process: what a user sees on stderr (pytest would capture the log records).
    captured = subprocess.run(
        [sys.executable, "-m", "lungseg.data", "check", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert captured.returncode == 0, captured.stderr
    assert "1 pairs" in captured.stdout
    warnings = captured.stderr.splitlines()
    assert len(warnings) == 4 and all(line.startswith("warning: ") for line in warnings), warnings
    for name in ("notes.txt: not an image file", "img_b.gif: not an image file",
                 "thumbnails: a folder", "MASK: 1 hidden entry skipped (.DS_Store)"):
        assert any(name in line for line in warnings), (name, warnings)


def test_check_reads_a_multi_target_set_of_deep_frames_as_training_would(tmp_path, capsys, caplog):
    import cv2

    frame = np.zeros((16, 20), np.uint16)
    frame[4:12, 5:15] = 4000  # 12-bit values in a 16-bit PNG that states no range
    mask = np.zeros((16, 20), np.uint8)
    mask[6:10, 6:10] = 255
    mask[5, 6:10] = 90  # an anti-aliased edge
    for index in (1, 2, 3):
        (tmp_path / "image").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "image" / f"Frame{index}.png"), frame)
        write_image(tmp_path / "masks" / "rib" / f"Frame{index}.png", mask)
    argv = ["check", str(tmp_path), "--target", "rib", "--size", "16", "16", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 pairs in 3 groups, all readable" in out
    assert out.rstrip().endswith("frames 16-bit (3 of 3 frames), values up to 4000, scaled by "
                                 "0-4095 (inferred)")
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("numbered frames of one sweep" in w for w in warnings) == 1
    assert sum("3 of 3 masks are not two-valued" in w for w in warnings) == 1
    assert sum("fit 12 bits (up to 4000): scaled as 12-bit; give --max-value" in w
               for w in warnings) == 1
    caplog.clear()
    assert main(argv + ["--max-value", "65535", "--groups", "blocks:2"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs in 2 groups" in out and "scaled by 0-65535 (given)" in out
    assert not any("sweep" in r.getMessage() or "bits" in r.getMessage() for r in caplog.records)
    assert main(argv + ["--crop", "auto", "--keep-aspect"]) == 0
    assert "after cropping to the imaging sector and padding to 16 x 16" in capsys.readouterr().out
    assert main(["check", str(tmp_path), "--quiet"]) == 2
    assert "choose one with --target NAME" in capsys.readouterr().err
