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
