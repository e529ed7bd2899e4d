"""Cross-validation folds and hold-out splits over frame names, saved as JSON.

Two modes:

``"paper"``
    What the authors did: shuffled ``KFold`` (or a shuffled 80/20 split) over *all* frames,
    mirror images included, so a frame and its flipped copy, or two neighbouring frames of a
    clip, can sit on both sides of a split. Faithful, and optimistic.
``"grouped"``
    No group (a frame, its mirror image and its neighbours, see ``pairs.default_group``) is
    ever split: shuffled ``GroupKFold`` and ``GroupShuffleSplit``. Sound, and the default to
    prefer for new results.

A split is ``{"train": [names], "val": [names]}``; k-fold gives a list of them.
"""

from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, train_test_split

from lungseg.config import SPLITS as MODES  # the modes above, as --split names them
from lungseg.errors import ConfigError, DataError
from lungseg.files import read_json, write_json


def kfold_splits(names, groups, k=5, mode="paper", seed=0):
    """``k`` folds over ``names``; each name is in exactly one fold's ``val`` list.

    ``groups`` gives each name's group (used by ``mode="grouped"``; checked for length in both
    modes). ``"paper"`` equals ``sklearn.model_selection.KFold(k, shuffle=True,
    random_state=seed)`` over the names in the given order.
    """
    names, groups = _check(names, groups, mode)
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k-fold cross-validation needs k >= 2 folds, got {k!r}")
    if mode == "paper":
        if k > len(names):
            raise ConfigError(f"cannot make {k} folds from only {len(names)} frames")
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed).split(names)
    else:
        n_groups = len(set(groups))
        if k > n_groups:
            raise ConfigError(
                f"cannot make {k} grouped folds from only {n_groups} groups; use fewer folds, "
                "smaller groups or mode 'paper'"
            )
        folds = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splitter = folds.split(names, groups=groups)
    return [_named(names, train, val) for train, val in splitter]


def holdout_split(names, groups, val_fraction=0.2, mode="paper", seed=0):
    """One shuffled train/validation split, ``val_fraction`` of the frames (or groups) held out.

    ``"paper"`` holds out ``round(val_fraction * n)`` of the ``n`` frames (``train_test_split``;
    80 of 400 for the paper's 80/20); ``"grouped"`` that fraction of the groups
    (``GroupShuffleSplit``), so the share of frames is close to it.
    """
    names, groups = _check(names, groups, mode)
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    if mode == "paper":
        if len(names) < 2:
            raise ConfigError(f"cannot split {len(names)} frame(s) into training and validation")
        n_val = min(max(round(val_fraction * len(names)), 1), len(names) - 1)
        train, val = train_test_split(
            np.arange(len(names)), test_size=n_val, shuffle=True, random_state=seed
        )
    else:
        if len(set(groups)) < 2:
            raise ConfigError("a grouped hold-out split needs at least 2 groups")
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train, val = next(splitter.split(names, groups=groups))
    return _named(names, np.sort(train), np.sort(val))


def write_splits(path, splits):
    """Save ``splits`` (a dict of splits, lists of splits and plain values) as JSON, atomically."""
    write_json(Path(path), splits)


def read_splits(path):
    """Read splits written by ``write_splits``; ``DataError`` when missing or not valid JSON."""
    path = Path(path)
    try:
        splits = read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path}: splits file does not exist") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable splits file ({error})") from None
    if not isinstance(splits, dict):
        raise DataError(f"{path}: a splits file holds a JSON object, not {type(splits).__name__}")
    return splits


def _check(names, groups, mode):
    if mode not in MODES:
        raise ConfigError(f"unknown split mode {mode!r}: use one of {', '.join(MODES)}")
    names, groups = list(names), list(groups)
    if len(names) != len(groups):
        raise ConfigError(f"{len(names)} names but {len(groups)} groups")
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        raise DataError([f"{name}: name appears more than once" for name in duplicates])
    return names, groups


def _named(names, train, val):
    return {"train": [names[i] for i in train], "val": [names[i] for i in val]}
