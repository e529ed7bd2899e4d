"""Folds and hold-out splits: the paper's KFold, grouped folds that never split a group, JSON."""

import numpy as np
import pytest
from sklearn.model_selection import KFold

from lungseg.data import default_group, holdout_split, kfold_splits, read_splits, write_splits
from lungseg.errors import ConfigError, DataError

ORIGINALS = [f"lung_pos{p}_{5 * i}" for p in (2, 3) for i in range(1, 41)]
NAMES = ORIGINALS + [name + "_flipped" for name in ORIGINALS]
GROUPS = [default_group(name) for name in NAMES]


def test_paper_folds_are_sklearn_kfold_over_all_frames():
    folds = kfold_splits(NAMES, GROUPS, k=5, mode="paper", seed=1)
    reference = KFold(n_splits=5, shuffle=True, random_state=1).split(NAMES)
    for fold, (train, val) in zip(folds, reference):
        assert fold["train"] == [NAMES[i] for i in train]
        assert fold["val"] == [NAMES[i] for i in val]
    # Flips are spread independently, so some frame and its mirror straddle a split.
    assert any(name + "_flipped" in fold["train"] for fold in folds for name in fold["val"])


@pytest.mark.parametrize("mode", ["paper", "grouped"])
def test_every_frame_is_validated_exactly_once(mode):
    folds = kfold_splits(NAMES, GROUPS, k=4, mode=mode, seed=0)
    validated = [name for fold in folds for name in fold["val"]]
    assert sorted(validated) == sorted(NAMES)
    for fold in folds:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == sorted(NAMES)


def test_grouped_folds_never_split_a_group():
    group_of = dict(zip(NAMES, GROUPS))
    folds = kfold_splits(NAMES, GROUPS, k=4, mode="grouped", seed=2)
    for fold in folds:
        train_groups = {group_of[name] for name in fold["train"]}
        val_groups = {group_of[name] for name in fold["val"]}
        assert train_groups.isdisjoint(val_groups)
    assert folds != kfold_splits(NAMES, GROUPS, k=4, mode="grouped", seed=3)  # seed shuffles


def test_holdout_is_about_80_20():
    split = holdout_split(NAMES, GROUPS, mode="paper", seed=0)
    assert len(split["val"]) == 32 and len(split["train"]) == 128
    assert len(holdout_split(NAMES[:16], GROUPS[:16], seed=0)["val"]) == 3  # round(0.2 * 16)
    grouped = holdout_split(NAMES, GROUPS, val_fraction=0.2, mode="grouped", seed=0)
    group_of = dict(zip(NAMES, GROUPS))
    assert {group_of[n] for n in grouped["train"]}.isdisjoint(group_of[n] for n in grouped["val"])
    assert 0.1 < len(grouped["val"]) / len(NAMES) < 0.4
    assert sorted(grouped["train"] + grouped["val"]) == sorted(NAMES)


def test_impossible_requests_are_explained():
    with pytest.raises(ConfigError, match="k >= 2"):
        kfold_splits(NAMES, GROUPS, k=1)
    with pytest.raises(ConfigError, match="161 folds from only 160 frames"):
        kfold_splits(NAMES, GROUPS, k=161)
    with pytest.raises(ConfigError, match="from only 10 groups"):
        kfold_splits(NAMES, GROUPS, k=11, mode="grouped")
    with pytest.raises(ConfigError, match="unknown split mode"):
        kfold_splits(NAMES, GROUPS, mode="random")
    with pytest.raises(ConfigError, match="val_fraction"):
        holdout_split(NAMES, GROUPS, val_fraction=1.5)
    with pytest.raises(DataError, match="lung_pos2_5: name appears more than once"):
        kfold_splits(NAMES + ["lung_pos2_5"], GROUPS + ["x"])


def test_splits_survive_the_json_round_trip(tmp_path):
    splits = {
        "mode": "grouped",
        "stage1": holdout_split(NAMES, GROUPS, seed=0),
        "folds": kfold_splits(NAMES, GROUPS, k=5, seed=0),
    }
    path = tmp_path / "run" / "splits.json"
    write_splits(path, splits)
    assert read_splits(path) == splits
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary left
    with pytest.raises(DataError, match="splits file does not exist"):
        read_splits(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DataError, match="not a readable splits file"):
        read_splits(tmp_path / "bad.json")
    assert np.isclose(len(splits["stage1"]["val"]) / len(NAMES), 0.2)
