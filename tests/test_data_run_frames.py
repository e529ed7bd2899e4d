"""The frames of a run (lungseg.data.run_frames): its LUS pool and X-Unet's salient set."""

import pytest

from lungseg.config import make_config
from lungseg.data import run_frames, write_lus_dataset, write_salient_dataset
from lungseg.errors import DataError
from lungseg.runs import RunFolder


def test_groups_describe_the_lus_data_not_the_salient_set(tmp_path):
    """``--groups`` names the LUS frames' groups; the salient set (``salient_0000`` ...) is
    not grouped by it, where a pattern for the LUS names would leave it uncovered."""
    lus = write_lus_dataset(tmp_path / "lus", n=4, seed=1)
    salient = write_salient_dataset(tmp_path / "salient", n=3, seed=2)
    config = make_config("xunet", "x", "quick", data=str(lus), salient=str(salient),
                         groups=r"^(\d+)", image_size=(16, 16), lus_frames=4, folds=2)
    run = RunFolder(tmp_path / "runs" / "x", config)
    frames = run_frames.salient_frames(run)
    assert frames.names == ["salient_0000", "salient_0001", "salient_0002"]
    assert frames.images.shape == (3, 16, 16, 1)
    with pytest.raises(DataError, match="group"):  # the pattern does not cover LUS names
        run_frames.lus_frames(run)


def test_a_pretraining_sweep_held_out_by_groups_is_warned_about_naming_its_options(tmp_path, caplog):
    """A pre-training set of numbered frames, each its own group, split by groups: the warning
    names --salient-groups and --salient-split. Not for the notebooks' random split (it never
    reads groups), nor for the generated composites, numbered but independent."""
    phantom = write_salient_dataset(tmp_path / "phantom", n=3, seed=2)  # salient_0000 ...
    lus = write_lus_dataset(tmp_path / "lus", n=4, seed=1)
    for split, given, warned in (("grouped", True, 1), ("paper", True, 0), ("grouped", False, 0)):
        caplog.clear()
        config = make_config("xunet", "x", "quick", data=str(lus), salient=str(phantom) if given else None,
                             salient_split=split, image_size=(16, 16), lus_frames=4, folds=2,
                             synthetic_salient=3)
        run_frames.salient_frames(RunFolder(tmp_path / "runs" / "x", config), keep_generated=True)
        warnings = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
        assert len(warnings) == warned, (split, given)
        if warned:
            assert warnings[0].startswith(f"{phantom / 'images'}: 3 names look like numbered frames")
            assert warnings[0].endswith("--salient-groups blocks:N (N frame numbers per group) and "
                                        "--salient-split grouped")
