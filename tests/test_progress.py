"""lungseg.progress: a live bar on a terminal, a few plain lines anywhere else."""

import io
import re

import numpy as np

from lungseg.data.io import write_image
from lungseg.progress import Progress, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_gives_start_tenths_and_end_lines():
    stream = io.StringIO()
    assert list(progress(range(120), label="loading frames", stream=stream)) == list(range(120))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "loading frames 0/120"
    assert re.fullmatch(r"loading frames 120/120 \(100%\) \d+\.\d s", lines[-1])
    tenths = [int(re.search(r"\((\d+)%\)", line)[1]) for line in lines[1:-1]]
    assert tenths == list(range(10, 100, 10))
    assert len(text) < 600  # the carriage-return bar wrote 6.3 KB for 120 frames


def test_few_items_and_uneven_steps():
    stream = io.StringIO()
    bar = Progress(3, "phantoms", stream=stream)
    for _ in range(3):
        bar.advance()
    bar.close()
    bar.close()  # once only
    counts = [line.split()[1] for line in stream.getvalue().splitlines()]
    assert counts == ["0/3", "1/3", "2/3", "3/3"]

    stream = io.StringIO()
    with Progress(25, "segmenting", stream=stream) as bar:
        for _ in range(12):
            bar.advance(2)
        bar.advance(1)
    counts = [int(line.split()[1].split("/")[0]) for line in stream.getvalue().splitlines()]
    assert counts[0] == 0 and counts[-1] == 25
    assert counts == sorted(set(counts)) and len(counts) <= 12


def test_stopped_early_says_so():
    stream = io.StringIO()
    items = progress(range(10), label="loading", stream=stream)
    for item in items:
        if item == 4:
            break
    items.close()
    assert stream.getvalue().splitlines()[-1].startswith("loading stopped at 4/10 after")


def test_terminal_gets_a_live_bar_on_one_line():
    stream = Terminal()
    list(progress(range(50), label="loading", stream=stream))
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 52  # the start, every new percent (2 % each), the end
    assert "\r" + "loading 50/50 [" + "=" * 30 + "]" in text
    assert "\x1b" not in text


def test_disabled_and_empty():
    stream = io.StringIO()
    assert list(progress([1, 2], enabled=False, stream=stream)) == [1, 2]
    with Progress(5, stream=stream, enabled=False) as bar:
        bar.advance(5)
    assert stream.getvalue() == ""
    list(progress([], label="nothing", stream=stream))
    assert stream.getvalue().splitlines() == ["nothing 0/0", stream.getvalue().splitlines()[-1]]
    assert "nothing 0/0 (100%)" in stream.getvalue()


def test_loading_frames_writes_plain_lines_to_a_captured_stderr(tmp_path, capsys):
    from lungseg.data import find_pairs, load_frames

    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255  # a set of empty masks is refused
    for index in range(12):
        write_image(tmp_path / "IMG" / f"img_lung_pos2_{index}.tif", np.zeros((8, 8), np.uint8))
        write_image(tmp_path / "MASK" / f"mask_lung_pos2_{index}.tif", mask)
    load_frames(find_pairs(tmp_path), (8, 8), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == "loading frames 0/12" and lines[-1].startswith("loading frames 12/12 (100%)")
    assert "\r" not in captured.err and "\x1b" not in captured.err


def test_predict_reports_progress_on_stderr_without_control_codes(tmp_path, capsys):
    import keras

    from lungseg.commands.predict import main

    inputs = keras.Input((16, 16, 1))
    path = tmp_path / "model.keras"
    keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)).save(path)
    for index in range(5):
        write_image(tmp_path / "frames" / f"f{index}.png", np.full((20, 20), 40 * index, np.uint8))
    assert main([str(path), str(tmp_path / "frames"), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [captured.out.strip()]  # stdout: the result line only
    assert captured.out.startswith("wrote 5 mask(s)")
    lines = captured.err.splitlines()
    assert lines[0] == "segmenting files 0/5" and lines[-1].startswith("segmenting files 5/5 (100%)")
    assert "\r" not in captured.err + captured.out and "\x1b" not in captured.err + captured.out
