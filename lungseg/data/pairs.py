"""Finding image/mask pairs on disk and the group each pair belongs to.

Three folder layouts are understood (``find_pairs(root, layout=...)``):

``lus``
    The paper's LUS data: ``IMG/img_<name>.tif`` with ``MASK/mask_<name>.tif``; the pair's name
    is what follows the prefix, e.g. ``lung_pos2_5``.
``salient``
    Salient-object data such as gray XPIE: ``images/<name>.jpg`` (or ``.png``, as the
    converter writes) with ``masks/<name>.png``.
``generic``
    ``images/`` and ``masks/`` (or ``image/`` and ``mask/``) holding files with the same stem,
    any of the extensions in ``io.IMAGE_SUFFIXES``.

Sets with several targets per frame keep one mask folder per target, ``masks/<target>/``
(``MASK/<target>/`` in the LUS layout): ``target="rib_shadow"`` reads ``masks/rib_shadow/``.

Only the image and mask folders are read. An entry in them that cannot be a frame or a mask
(a sub-folder, a notes file, a file whose suffix is not an image suffix) is named in a warning
and skipped: such an entry should not stop a training run, but a user who meant it as data
(a frame saved as .gif, say) should learn that it was not used. Hidden entries (``.DS_Store``,
``._img_1.tif``) are skipped with one warning per folder that names them. Files with an image
suffix that cannot be paired, are misnamed or clash are errors (``DataError``). Other entries
of the data folder itself (a README, a groups CSV) are not data and are left alone.

A *group* is a set of frames too alike to be split between training and validation (a frame,
its mirror image and its neighbours in a clip); grouped cross-validation keeps each group on
one side. Without instructions, a name that carries a subject (``subj<k>`` between
underscores, as ``lung_subj03_pos2_35``) is grouped by that subject, so that a grouped split
holds out whole subjects; other LUS names ``<sequence>pos<k>_<frame>`` are grouped by probe
position and windows of ``LUS_FRAME_WINDOW`` frame numbers; any other name is its own group.
``groups="blocks:N"`` groups the frames of a sweep, ``<sequence><number>`` (``Frame12``,
``clip3_0012``), by contiguous blocks of N frame numbers of each sequence. When names look like
numbered frames of a sweep and still every frame is its own group, a warning says so: any split
would then put near-duplicate neighbours on both sides.
"""

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lungseg.data.io import IMAGE_SUFFIXES, list_image_files
from lungseg.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "lus", "salient", "generic")
# Frame numbers per default LUS group: 10 stored frames at the paper's every-5th-frame sampling.
LUS_FRAME_WINDOW = 50
_LUS_NAME = re.compile(r"^(?P<sequence>.*pos\d+)_(?P<frame>\d+)")
# A subject in a name: a word that names one (subj, subject, patient, pat, pt, case, volunteer;
# any case), a number (after a "_", "-", a space or nothing), at the start or after one of those,
# then one of those or the end: lung_subj03_pos2_5, Patient_12-frame7, case3 ... The generated
# phantoms' subjects are subj<k>.
SUBJECT_PREFIX = "subj"
SUBJECT_TAG = re.compile(r"(?:^|[_\- ])((?:subject|subj|patient|pat|pt|case|volunteer)[_\- ]?\d+)(?=[_\- ]|$)",
                         re.IGNORECASE)
# A frame of a sweep: the sequence (the name without its trailing number) and the number.
SWEEP_FRAME = re.compile(r"^(?P<sequence>.*?)(?P<frame>\d+)$")
BLOCKS_PREFIX = "blocks:"
GROUP_FLAGS = ("--groups", "--split")  # the options that set a data set's groups and split
# Frames of one sequence that make a set look like a sweep when each is its own group.
SWEEP_FRAMES_WARNED = 3

# (image folders, mask folders, image prefix, mask prefix, image suffixes, mask suffixes);
# the first folder name of each is the one named when missing.
_LAYOUT_RULES = {
    "lus": (("IMG",), ("MASK",), "img_", "mask_", IMAGE_SUFFIXES, IMAGE_SUFFIXES),
    "salient": (("images",), ("masks",), "", "", (".jpg", ".jpeg", ".png"), (".png",)),
    "generic": (("images", "image"), ("masks", "mask"), "", "", IMAGE_SUFFIXES, IMAGE_SUFFIXES),
}


@dataclass(frozen=True)
class Pair:
    """A frame and its mask on disk; ``name`` is their shared stem, ``group`` its split group."""

    image: Path
    mask: Path
    name: str
    group: str


def natural_key(name):
    """Sort key that orders embedded numbers by value: ``pos2_5`` before ``pos2_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def default_group(name):
    """``lung_pos2_35`` -> ``lung_pos2:0-49`` (probe position and frame-number window);
    ``lung_subj03_pos2_35`` -> ``subj03`` (the subject, all of their frames).

    Names that carry no subject and do not look like LUS frames (``...pos<k>_<frame>``) are
    their own group. A suffix after the frame number, such as ``_flipped``, keeps the
    original's group.
    """
    subject = SUBJECT_TAG.search(name)
    if subject is not None:
        return subject.group(1)
    match = _LUS_NAME.search(name)
    if match is None:
        return name
    start = int(match["frame"]) // LUS_FRAME_WINDOW * LUS_FRAME_WINDOW
    return f"{match['sequence']}:{start}-{start + LUS_FRAME_WINDOW - 1}"


def find_pairs(root, layout="auto", groups=None, target=None, warn_groups=True, flags=GROUP_FLAGS):
    """All image/mask pairs under ``root``, sorted naturally by name.

    ``layout`` is ``"lus"``, ``"salient"``, ``"generic"`` or ``"auto"`` (``lus`` when ``IMG/``
    or ``MASK/`` exists, else ``generic`` when ``images/`` or ``masks/`` (``image/``,
    ``mask/``) does; folder names match case-insensitively). ``target`` names the sub-folder
    of the mask folder to read (``masks/<target>/``). ``groups`` is ``None``
    (``default_group``), ``"blocks:N"`` (:func:`block_group`), a regular expression whose
    first capture group (or whole match) in each name is the group, or the path of a CSV file
    of ``stem,group`` rows (an optional ``stem,group`` header allowed). ``warn_groups`` warns
    when the names look like the frames of a sweep and every frame is its own group. ``flags``
    are the options that set this set's groups and split, named in that warning and in errors
    (the pre-training set's are ``--salient-groups`` and ``--salient-split``).

    Raises ``DataError`` listing every problem found, one line each naming its file: missing
    folders, no images, an image without a mask or a mask without an image, two files with the
    same name, misnamed files, names the group pattern or the CSV file does not cover. Entries
    that cannot be frames or masks are warnings (see the module docstring).
    """
    pairs, problems = scan_pairs(root, layout, groups, target, warn_groups, flags)
    if problems:
        raise DataError(problems)
    return pairs


def scan_pairs(root, layout="auto", groups=None, target=None, warn_groups=True, flags=GROUP_FLAGS):
    """``(pairs, problems)``: ``find_pairs`` that returns the problems of single files.

    ``pairs`` holds every image that has a mask (its ``group`` is ``None`` where the groups
    do not cover it), so their contents can be checked in the same pass; ``problems`` holds
    the lines ``find_pairs`` would raise. A missing data, image or mask folder, which leaves
    nothing to pair, still raises ``DataError`` at once.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: " + ("a file, not a data folder" if root.exists() else "data folder does not exist"))
    if layout == "auto":
        layout = _detect_layout(root)
    image_names, mask_names, image_prefix, mask_prefix, image_suffixes, mask_suffixes = (
        _LAYOUT_RULES[layout]
    )
    problems = []
    image_dir = _subfolder(root, *image_names)
    mask_dir = _subfolder(root, *mask_names)
    for folder, wanted in ((image_dir, image_names[0]), (mask_dir, mask_names[0])):
        if folder is None:
            problems.append(f"{root / wanted}: folder missing (layout {layout!r})")
    if problems:
        raise DataError(problems)
    mask_dir = _target_folder(mask_dir, target)

    images = _files_by_name(image_dir, image_prefix, image_suffixes, layout, problems)
    masks = _files_by_name(mask_dir, mask_prefix, mask_suffixes, layout, problems)
    if not images and not problems:
        problems.append(f"{image_dir}: no images ({', '.join(image_suffixes)})")
    for name in sorted(images.keys() - masks.keys(), key=natural_key):
        problems.append(f"{images[name]}: no mask {mask_dir / (mask_prefix + name)}.* found")
    for name in sorted(masks.keys() - images.keys(), key=natural_key):
        problems.append(f"{masks[name]}: mask without an image in {image_dir}")

    names = sorted(images.keys() & masks.keys(), key=natural_key)
    group_of = _group_function(groups, problems, flags[0])
    pairs = [Pair(images[name], masks[name], name, group_of(name, images[name])) for name in names]
    if warn_groups and not problems:
        warning = sweep_warning(pairs, image_dir, flags)
        if warning:
            logger.warning("%s", warning)
    return pairs, problems


def _target_folder(mask_dir, target):
    """``mask_dir/<target>``, or ``mask_dir`` itself without a target; ``DataError`` naming
    the targets there when the folder holds only sub-folders and none was chosen."""
    targets = sorted(p.name for p in mask_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if target is None:
        if targets and not list_image_files(mask_dir)[0]:
            raise DataError(f"{mask_dir}: holds one folder per target ({', '.join(targets)}): "
                            "choose one with --target NAME")
        return mask_dir
    if not target or Path(target).name != target or target in (".", ".."):
        raise ConfigError(f"--target must name one folder of {mask_dir}, got {target!r}")
    folder = mask_dir / target
    if not folder.is_dir():
        raise DataError(f"{folder}: no such target folder (targets in {mask_dir}: "
                        f"{', '.join(targets) or 'none'})")
    return folder


def block_group(name, size):
    """``Frame37`` with ``size`` 50 -> ``Frame:0-49``: the sequence (the name without its
    trailing number) and the block of ``size`` frame numbers holding it; None without a number."""
    match = SWEEP_FRAME.match(name)
    if match is None:
        return None
    start = int(match["frame"]) // size * size
    return f"{match['sequence']}:{start}-{start + size - 1}"


def sweep_warning(pairs, where, flags=GROUP_FLAGS):
    """A warning when names look like numbered frames of a sweep (``SWEEP_FRAMES_WARNED`` or
    more of one sequence) yet every frame is its own group; else None."""
    if len(pairs) < SWEEP_FRAMES_WARNED or len({pair.group for pair in pairs}) < len(pairs):
        return None
    sequences = {}
    for pair in pairs:
        match = SWEEP_FRAME.match(pair.name)
        if match:
            sequences.setdefault(match["sequence"], []).append(pair.name)
    sweep = max(sequences.values(), key=len, default=[])
    if len(sweep) < SWEEP_FRAMES_WARNED:
        return None
    return (f"{where}: {len(sweep)} names look like numbered frames of one sweep "
            f"({', '.join(sweep[:2])}, ...) but every frame is its own group, so a split puts "
            f"near-duplicate neighbours on both sides; group them with {flags[0]} blocks:N "
            f"(N frame numbers per group) and {flags[1]} grouped")


def _detect_layout(root):
    # One folder of a pair is enough to tell the layout; the other is then reported missing.
    if _subfolder(root, "IMG") or _subfolder(root, "MASK"):
        return "lus"
    if _subfolder(root, "images", "image") or _subfolder(root, "masks", "mask"):
        return "generic"
    raise DataError(
        f"{root}: no IMG/ + MASK/ folders (LUS layout) and no images/ + masks/ folders "
        "(salient or generic layout; image/ + mask/ too)"
    )


def _subfolder(root, *names):
    """The sub-folder of ``root`` called one of ``names`` (the first found), ignoring case;
    exact case preferred."""
    for name in names:
        exact = root / name
        if exact.is_dir():
            return exact
        matches = [p for p in root.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
    return None


def _files_by_name(folder, prefix, suffixes, layout, problems):
    """Map each file's name (stem without ``prefix``) to its path, noting misfits in problems.

    Entries that cannot be frames or masks are named in warnings and skipped.
    """
    found = {}
    files, skipped = list_image_files(folder)
    for line in skipped:
        logger.warning("%s", line)
    for path in files:
        suffix = path.suffix.lower()
        if suffix not in suffixes:
            problems.append(
                f"{path}: {layout} layout expects {' or '.join(suffixes)} files here "
                "(use layout 'generic' for mixed file types)"
            )
            continue
        if not path.stem.startswith(prefix):
            problems.append(f"{path}: name does not start with {prefix!r} ({layout} layout)")
            continue
        name = path.stem[len(prefix):]
        if name in found:
            problems.append(f"{path}: same name as {found[name].name}; keep only one of them")
            continue
        found[name] = path
    return found


def _group_function(groups, problems, flag):
    """A function (name, image path) -> group, recording unmatched names in ``problems``."""
    if groups is None:
        return lambda name, image: default_group(name)
    text = str(groups)
    if text.startswith(BLOCKS_PREFIX):
        size = block_size(text, flag)

        def from_blocks(name, image):
            group = block_group(name, size)
            if group is None:
                problems.append(f"{image}: name {name!r} does not end in a frame number "
                                f"({text} groups <sequence><number> names)")
            return group

        return from_blocks
    if isinstance(groups, Path) or text.lower().endswith(".csv") or Path(text).is_file():
        return _csv_groups(Path(text), problems)
    try:
        pattern = re.compile(text)
    except re.error as error:
        raise ConfigError(f"invalid group pattern {text!r}: {error}") from error

    def from_pattern(name, image):
        match = pattern.search(name)
        group = None if match is None else match.group(1 if pattern.groups else 0)
        if not group:
            problems.append(f"{image}: group pattern {text!r} does not match the name {name!r}")
        return group

    return from_pattern


def block_size(text, flag):
    """N of ``blocks:N``; ``ConfigError`` naming ``flag`` unless a positive whole number."""
    value = text[len(BLOCKS_PREFIX):]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{flag} {text}: expected blocks:N with N a positive whole number "
                          "of frame numbers per group")
    return int(value)


def _csv_groups(path, problems):
    if not path.is_file():
        raise DataError(f"{path}: groups file does not exist")
    table = {}
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            row = [cell.strip() for cell in row]
            is_header = line == 1 and [cell.lower() for cell in row] == ["stem", "group"]
            if not any(row) or is_header:
                continue
            if len(row) != 2 or not all(row):
                problems.append(f"{path}:{line}: expected 'stem,group', got {','.join(row)!r}")
                continue
            stem, group = row
            if table.get(stem, group) != group:
                problems.append(f"{path}:{line}: {stem!r} is given two groups")
            table[stem] = group

    def from_table(name, image):
        if name not in table:
            problems.append(f"{image}: name {name!r} missing from groups file {path}")
            return None
        return table[name]

    return from_table
