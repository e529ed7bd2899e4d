"""Data: reading and checking image/mask pairs, look-alike data, tf.data batches, splits.

Data flows one way through this package::

    find_pairs(root)           -> [Pair]        files on disk, checked, with their groups
    load_frames(pairs, size)   -> FrameSet      decoded and resized once (the cache)
    select_lus_frames(...)     -> FrameSet, rule  the paper's 200 / 400 / 600-frame sets
    kfold_splits / holdout_split                frame names per fold, saved as JSON
    make_dataset(frames, ...)  -> tf.data       batches, shuffled and augmented for training

``synthetic`` makes LUS phantoms (one volunteer or many subjects, linear or convex probe)
and salient-object composites in the same layouts, ``xpie``
converts an XPIE download to the salient layout, and ``python -m lungseg.data`` generates,
converts or checks a data set from the command line.
"""

from lungseg.data.augment import PaperAugmentation, StrongAugmentation, make_augmentation
from lungseg.data.frames import FLIP_SUFFIX, FrameSet, load_frames, select_lus_frames
from lungseg.data.pairs import LUS_FRAME_WINDOW, Pair, default_group, find_pairs
from lungseg.data.pipeline import make_dataset
from lungseg.data.splits import holdout_split, kfold_splits, read_splits, write_splits
from lungseg.data.synthetic import (
    ensure_dataset,
    lus_phantom,
    lus_phantoms_needed,
    lus_sequence,
    salient_composite,
    write_lus_dataset,
    write_salient_dataset,
)
from lungseg.data.xpie import convert_xpie

__all__ = [
    "Pair",
    "find_pairs",
    "default_group",
    "LUS_FRAME_WINDOW",
    "FrameSet",
    "FLIP_SUFFIX",
    "load_frames",
    "select_lus_frames",
    "PaperAugmentation",
    "StrongAugmentation",
    "make_augmentation",
    "make_dataset",
    "kfold_splits",
    "holdout_split",
    "write_splits",
    "read_splits",
    "lus_phantom",
    "lus_phantoms_needed",
    "lus_sequence",
    "salient_composite",
    "write_lus_dataset",
    "write_salient_dataset",
    "ensure_dataset",
    "convert_xpie",
]
