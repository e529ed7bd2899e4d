"""Every Markdown table lungseg writes renders as a table in a GFM viewer, with the cells meant."""

import math

import pytest

from lungseg.markdown import escape_cell, markdown_table
from lungseg.report import result_columns, results_table
from markdown_tables import gfm_tables


def summary(label, stage1=0.8, trained=None):
    across = {"dice_global": {"mean": 0.75}}
    return {
        "experiment": label, "model": "X-Unet", "prediction": "plain",
        "training_frames": "16 (with flips); 8 per fold model", "fine_tuning": "all layers",
        "starting_weights": "pre-trained on generated composites (96 frames)",
        "stage1_dice": stage1, "fold_dice_mean": 0.81234, "fold_dice_sd": 0.01, "fold_dice_sd_paper": 0.005,
        "best_fold": "fold_2", "best_fold_dice": 0.82, "across_folds": across, "per_image_dice_mean": 0.7,
        "spurious_per_image": 1.5, "hd95_mean": 3.25, "assd_mean": 1.04, "hd95_mm_mean": 0.65,
        "assd_mm_mean": 0.208, "trained_on_test_frames": trained,
    }


@pytest.mark.parametrize("spacing", [None, (0.2, 0.2)])
def test_results_table_renders_with_one_cell_per_column(spacing):
    rows = [summary("a"), summary("b|c", stage1=math.nan, trained={"fold_1": 6, "stage1": 12})]
    text = results_table(rows, "the fixed test set T", spacing=spacing)
    (header, body), = gfm_tables(text)
    columns = 18 if spacing else 16
    assert header == [name for name, _ in result_columns(spacing is not None)] and len(header) == columns
    assert len(body) == 2 and all(len(row) == columns for row in body)
    first, second = (dict(zip(header, row)) for row in body)
    assert first["fold Dice (mean ± SD)"] == "0.8123 ± 0.0100"
    assert first["best fold"] == "fold_2 (0.8200)"
    assert first["starting weights"] == "pre-trained on generated composites (96 frames)"
    assert first["test frames trained on"] == "-"
    assert second["experiment"] == "b|c"  # a pipe in a name stays inside its cell
    assert second["stage-1 Dice"] == "-"
    assert second["test frames trained on"] == "fold_1 6, stage1 12"
    if spacing:
        assert (first["HD95 (mm)"], first["ASSD (mm)"]) == ("0.65", "0.21")


def test_model_resolution_drops_the_millimetre_columns():
    (header, _), = gfm_tables(results_table([summary("a")], "x", resolution="model", spacing=(0.2, 0.2)))
    assert len(header) == 16 and "HD95 (mm)" not in header


def test_markdown_table_escapes_what_would_break_a_row():
    lines = markdown_table([("a|b", lambda r: r[0]), ("c", lambda r: r[1])], [("x\ny", ""), ("1", "p\\|q")])
    (header, body), = gfm_tables("\n".join(lines))
    assert header == ["a|b", "c"]
    assert body == [["x y", "-"], ["1", "p\\|q"]]  # the backslash survives as written
    assert escape_cell("  two\tspaces ") == "two spaces"


def test_a_table_whose_rows_disagree_does_not_render():
    # What results.md was before: a header of 3 cells over a delimiter of 2 is no table.
    assert gfm_tables("| a | b | c |\n|---|---|\n| 1 | 2 | 3 |\n") == []
