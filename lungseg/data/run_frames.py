"""The frames a run trains on: its LUS pool and X-Unet's salient set, loaded as its
configuration says, from the user's folders or from the generated sets beside the run folder.

``run`` is a :class:`lungseg.runs.RunFolder` (its configuration and where its generated sets
lie); nothing here writes inside a run folder.
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path

from lungseg.config import ALL_FRAMES
from lungseg.console import log, warn
from lungseg.data.frames import Reading, load_frames, select_lus_frames, unused_frames
from lungseg.data.pairs import find_pairs


def lus_frames(run, keep_generated=False, native=False):
    """The run's LUS frames (its training pool) as its training loaded them, and the sentence
    saying which rule chose them; ``native`` keeps each mask at its own size too. Training
    (``keep_generated``) warns when a user's folder holds frames that no rule chose."""
    config = run.config
    frames = _load_lus(run, keep_generated, native)
    unused = unused_frames(frames, config.lus_frames, flips=config.flips) if keep_generated and config.data else 0
    if unused:
        warn(f"{config.data}: {unused} of its {len(frames)} frames are left out (--lus-frames "
             f"{config.lus_frames}{'' if config.flips else ', --no-flips'} takes the first "
             f"{len(frames) - unused} in name order); --lus-frames {ALL_FRAMES} trains on every frame")
    return select_lus_frames(frames, config.lus_frames, flips=config.flips)


def all_lus_frames(run, native=False):
    """Every frame of the run's LUS data and its mirror image (a test list may name any)."""
    return _load_lus(run, False, native).with_flips()


def _load_lus(run, keep_generated, native=False):
    config = run.config
    with _data_folder(run, "lus", config.data, lus_pool_size(config), keep_generated) as root:
        pairs = find_pairs(root, groups=config.groups, target=getattr(config, "target", None))
        return load_frames(pairs, config.image_size, config.interpolation, progress=True,
                           native=native, reading=Reading.of(config))


# The options that set the pre-training set's groups and split, named in its warnings and errors.
SALIENT_GROUP_FLAGS = ("--salient-groups", "--salient-split")


def salient_frames(run, keep_generated=False):
    """X-Unet's pre-training set (``--salient``, else the generated composites), read with its
    own options (``--salient-target``, ``--salient-groups``, ``--salient-crop`` ...): the
    fine-tuning set's never apply to it."""
    config = run.config
    with _data_folder(run, "salient", config.salient, config.synthetic_salient, keep_generated) as root:
        pairs = find_pairs(root, groups=config.salient_groups, target=config.salient_target,
                           warn_groups=warn_salient_groups(config), flags=SALIENT_GROUP_FLAGS)
        return load_frames(pairs, config.image_size, config.interpolation, progress=True,
                           reading=salient_reading(config))


def warn_salient_groups(config):
    """Whether to warn about a pre-training set of numbered frames that are each their own
    group: only for a folder the user gave and asked to hold out by groups. The generated
    composites (``salient_0000`` ...) and XPIE (``Y_E_1`` ...) are numbered too, but their
    images are independent, and the notebooks' random split never looks at groups."""
    return bool(config.salient) and config.salient_split == "grouped"


def salient_reading(config):
    """How the pre-training set's frames and masks are read (its ``salient_*`` fields)."""
    return Reading(mask_threshold=config.salient_mask_threshold, max_value=config.salient_max_value,
                   crop=config.salient_crop, keep_aspect=config.salient_keep_aspect)


def lus_pool_size(config):
    """How many phantom frames to generate: the preset's number, or enough for the set asked."""
    from lungseg.data.synthetic import lus_phantoms_needed

    if config.lus_frames == ALL_FRAMES:
        return config.synthetic_lus
    originals = config.lus_frames // 2 if config.flips else config.lus_frames
    return max(config.synthetic_lus, lus_phantoms_needed(originals))


@contextmanager
def _data_folder(run, kind, given, n, keep_generated):
    """The user's folder, or the generated set beside the run folder.

    Training (``keep_generated``) makes the set there once for all its runs; a copied run
    folder evaluated elsewhere, with no set beside it, makes it again in a temporary
    folder that is removed afterwards, so nothing is written outside its output.
    """
    if given:
        log(f"{kind} frames from {given}")
        yield Path(given)
        return
    from lungseg.data.synthetic import ensure_dataset, is_generated_set

    seed = run.config.seed
    cache = run.generated_set(kind, n)
    if keep_generated or is_generated_set(cache, kind, n, seed):
        log(f"no {kind} data given: using {n} generated frames (seed {seed}) in {cache}")
        yield ensure_dataset(kind, cache, n=n, seed=seed)
        return
    log(f"no {kind} data given and no generated set beside {run.root}: "
        f"generating its {n} frames (seed {seed}) again in a temporary folder")
    with tempfile.TemporaryDirectory(prefix="lungseg-") as scratch:
        yield ensure_dataset(kind, Path(scratch) / kind, n=n, seed=seed)
