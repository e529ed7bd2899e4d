"""evaluate.py's pieces that need no trained run: the figures of runs of several sizes, the
authors' test list (evaluate.py end to end on the tiny runs: test_tiny_runs.py)."""

import numpy as np

from lungseg.config import make_config
from lungseg.evaluation import aggregate_folds
from lungseg.report import Experiment, Scored, make_figures, read_test_list, trained_on
from lungseg.runs import RunFolder


def test_dice_against_frames_figure_when_runs_differ_in_size(tmp_path):
    experiments, summaries = [], []
    rng = np.random.default_rng(0)
    for n, model in ((200, "vunet"), (400, "vunet"), (200, "xunet"), (400, "xunet")):
        config = make_config(model, f"{model}{n}", lus_frames=n, out="/nonexistent")
        run = RunFolder(tmp_path / f"{model}{n}", config)
        experiment = Experiment(label=f"{model}{n}", model=model, models={"fold_1": None, "fold_2": None}, run=run)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:6] = 1
        experiments.append(Scored(experiment, predictions={"f": (rng.integers(0, 255, (8, 8)), mask, mask)},
                                  rows=[{"dice": 1.0, "spurious": 0}]))
        summaries.append({"model": model, "pool_frames": n,
                          "across_folds": {"dice": aggregate_folds({"fold_1": 0.8, "fold_2": 0.82})}})
    built = make_figures(experiments, summaries)
    assert set(built) == {"overlays", "boxplots", "dice_vs_frames"}
    line_axes = built["dice_vs_frames"].axes[0]
    assert len([line for line in line_axes.lines if len(line.get_xdata()) == 2]) >= 2


def test_authors_test_list_is_read_as_it_is_and_overlap_counted(tmp_path):
    csv_path = tmp_path / "Default_testset.csv"
    csv_path.write_text(
        ",filename,mask\n"
        "0,Lung_seg_data/NEW_TIF_IMG/img_lung_pos3_445.tif,Lung_seg_data/NEW_TIF_MASK/mask_lung_pos3_445.tif\n"
        "1,Lung_seg_data/NEW_CODES/newcode_gen_images/img_lung_pos2_5_flipped.tif,"
        "Lung_seg_data/NEW_CODES/newcode_gen_masks/mask_lung_pos2_5_flipped.tif\n"
        "2,Lung_seg_data/NEW_TIF_IMG/img_lung_pos2_110.tif,Lung_seg_data/NEW_TIF_MASK/mask_lung_pos2_110.tif\n"
        "3,Lung_seg_data/NEW_CODES/newcode_gen_images/img_lung_pos3_905_flipped.tif,"
        "Lung_seg_data/NEW_CODES/newcode_gen_masks/mask_lung_pos3_905_flipped.tif\n"
    )
    names = read_test_list(csv_path)
    assert names == ["lung_pos3_445", "lung_pos2_5_flipped", "lung_pos2_110", "lung_pos3_905_flipped"]
    # trained on: pos3_445 itself, pos2_5 as its original (the mirror of a listed flip),
    # not pos2_110 (only pos2_115 trained), pos3_905_flipped itself
    training = ["lung_pos3_445", "lung_pos2_5", "lung_pos2_115", "lung_pos3_905_flipped", "lung_pos3_5"]
    assert trained_on(names, training) == 3
    assert trained_on(names, []) == 0
