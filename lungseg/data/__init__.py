"""Data: reading and checking image/mask pairs, look-alike data, tf.data batches, splits.

Data flows one way through this package::

    find_pairs(root)           -> [Pair]        files on disk, checked, with their groups
    load_frames(pairs, size)   -> FrameSet      decoded and resized once (the cache)
    select_lus_frames(...)     -> FrameSet, rule  the paper's 200 / 400 / 600-frame sets
    kfold_splits / holdout_split                frame names per fold, saved as JSON
    make_dataset(frames, ...)  -> tf.data       batches, shuffled and augmented for training

``run_frames`` loads the frames a run trains on (its configuration's data, or the generated
sets beside its run folder). ``synthetic`` makes LUS phantoms (one volunteer or many subjects, linear or convex probe)
and salient-object composites in the same layouts, ``xpie``
converts an XPIE download to the salient layout, and ``python -m lungseg.data`` generates,
converts or checks a data set from the command line.

The names below are imported on first use (PEP 562): ``augment`` and ``pipeline`` need
TensorFlow, which finding, checking, loading and generating data do not load.
"""

from lungseg import _startup

# Public name -> the module of this package that defines it, imported on first use.
_LAZY = {
    "Pair": ".pairs",
    "find_pairs": ".pairs",
    "default_group": ".pairs",
    "LUS_FRAME_WINDOW": ".pairs",
    "FrameSet": ".frames",
    "FLIP_SUFFIX": ".frames",
    "load_frames": ".frames",
    "select_lus_frames": ".frames",
    "PaperAugmentation": ".augment",
    "StrongAugmentation": ".augment",
    "make_augmentation": ".augment",
    "make_dataset": ".pipeline",
    "kfold_splits": ".splits",
    "holdout_split": ".splits",
    "write_splits": ".splits",
    "read_splits": ".splits",
    "lus_phantom": ".synthetic",
    "lus_phantoms_needed": ".synthetic",
    "lus_sequence": ".synthetic",
    "salient_composite": ".synthetic",
    "write_lus_dataset": ".synthetic",
    "write_salient_dataset": ".synthetic",
    "ensure_dataset": ".synthetic",
    "convert_xpie": ".xpie",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = _startup.lazy_attributes(__name__, _LAZY)
