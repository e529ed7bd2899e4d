"""Converting an XPIE download into gray images and 0/255 masks (``images/`` + ``masks/``).

XPIE (Xia et al., "What is and What is not a Salient Object?", CVPR 2017) as the authors read
it (``XPIEpreprocess.ipynb``): ``XPIE/Images/<name>.jpg`` colour photographs and
``XPIE/Grounds/<name>.png`` binary masks of the same size and stem, 10,000 pairs (``Y_E_1`` ...
``Y_P_625``). ``convert_xpie`` writes ``images/<name>.png`` (gray) and ``masks/<name>.png``
(0/255), both lossless as the authors' gray images were, which ``find_pairs(out)`` (the
``generic`` layout) and the X-Unet pre-training read.

Gray conversion (``channel_order``):

``"paper"`` (default)
    The authors' conversion: ``cv2.imread`` (BGR) then ``COLOR_RGB2GRAY``, so red and blue
    weights are exchanged (a pure red pixel becomes 29, not 76). The images are those the
    authors pre-trained on, pixel for pixel.
``"rgb"``
    Luminance with the right weights: OpenCV decodes BGR, converted with ``COLOR_BGR2GRAY``.

Images keep their size unless ``size`` is given; then image and mask are stretched to
``size`` x ``size`` with nearest, as the authors' Keras loader did.
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from lungseg.data.io import IMAGE_SUFFIXES, decode_image, to_gray_uint8, write_image
from lungseg.data.masks import read_mask
from lungseg.data.pairs import _files_by_name, _subfolder, natural_key
from lungseg.progress import progress as progress_bar
from lungseg.data.synthetic import _replace_folder
from lungseg.errors import ConfigError, DataError
from lungseg.files import temporary_path, write_json

XPIE_FOLDERS = ("Images", "Grounds")  # photographs, masks
CHANNEL_ORDERS = ("paper", "rgb")
DEFAULT_CHANNEL_ORDER = "paper"  # the authors' swapped weights: the images they trained on
MANIFEST = "xpie.json"


def convert_xpie(src, out, channel_order=DEFAULT_CHANNEL_ORDER, size=None, progress=False):
    """Convert the XPIE folder ``src`` into ``out`` (``images/`` + ``masks/``); return the count.

    Every problem (missing folder, no images, an image without a mask or a mask without an
    image, an unreadable or non-binary file, image and mask of different sizes) is collected
    and raised together as one ``DataError``, one ``FILE: problem`` line each. The set is
    written to a temporary folder beside ``out`` and renamed into place only when complete;
    ``out`` must not exist or be empty. ``out/xpie.json`` records the source and options.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(
            f"unknown channel order {channel_order!r}: use one of {', '.join(CHANNEL_ORDERS)}"
        )
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ConfigError(f"size must be a positive number of pixels, got {size!r}")
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: XPIE folder does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; choose another --out")

    problems = []
    pairs = _xpie_pairs(src, problems)
    temporary = temporary_path(out)

    def convert(pair):
        name, image_path, mask_path = pair
        try:
            return _convert_pair(name, image_path, mask_path, temporary, channel_order, size)
        except OSError as error:
            return [f"{temporary}: cannot write there ({error.strerror or error})"]

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        # OpenCV decodes and encodes without holding the GIL, so threads use every core.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(convert, pairs)
            for lines in progress_bar(results, len(pairs), "XPIE pairs", enabled=progress):
                problems += lines
        if problems:
            raise DataError(problems)
        write_json(temporary / MANIFEST, {
            "source": str(src.resolve()), "pairs": len(pairs), "channel_order": channel_order,
            "size": size, "masks": "binarised at half their maximum, stored 0/255",
        })
        _replace_folder(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return len(pairs)


def _xpie_pairs(src, problems):
    """[(name, image, mask)] of ``src``, sorted naturally; layout problems go to ``problems``."""
    folders = [_subfolder(src, name) for name in XPIE_FOLDERS]
    for folder, name in zip(folders, XPIE_FOLDERS):
        if folder is None:
            problems.append(f"{src / name}: folder missing (XPIE holds Images/ and Grounds/)")
    if None in folders:
        raise DataError(problems)
    image_dir, mask_dir = folders
    images = _files_by_name(image_dir, "", IMAGE_SUFFIXES, "xpie", problems)
    masks = _files_by_name(mask_dir, "", IMAGE_SUFFIXES, "xpie", problems)
    if not images:
        problems.append(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    for name in sorted(images.keys() - masks.keys(), key=natural_key):
        problems.append(f"{images[name]}: no mask {mask_dir / name}.* found")
    for name in sorted(masks.keys() - images.keys(), key=natural_key):
        problems.append(f"{masks[name]}: mask without an image in {image_dir}")
    names = sorted(images.keys() & masks.keys(), key=natural_key)
    return [(name, images[name], masks[name]) for name in names]


def _convert_pair(name, image_path, mask_path, out, channel_order, size):
    """Write one gray image and its 0/255 mask under ``out``; return the problems found."""
    problems = []
    image = mask = None
    try:
        image = gray(decode_image(image_path), channel_order, image_path)
    except DataError as error:
        problems += error.problems
    try:
        mask = read_mask(mask_path)
    except DataError as error:
        problems += error.problems
    if image is None or mask is None:
        return problems
    if image.shape != mask.shape:
        return [
            f"{mask_path}: size {mask.shape[0]} x {mask.shape[1]} (height x width) differs from "
            f"its image {image_path} ({image.shape[0]} x {image.shape[1]})"
        ]
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    write_image(out / "images" / f"{name}.png", image)
    write_image(out / "masks" / f"{name}.png", mask * np.uint8(255))
    return []


def gray(array, channel_order=DEFAULT_CHANNEL_ORDER, path="<array>"):
    """A decoded image (OpenCV's BGR order) as 2-D uint8 gray, with ``channel_order``'s weights.

    ``"paper"`` hands OpenCV's BGR pixels to a conversion that expects RGB, as the authors'
    ``cv2.cvtColor(cv2.imread(f), cv2.COLOR_RGB2GRAY)`` did; gray images are unaffected.
    """
    if channel_order == "paper" and array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., [2, 1, 0, 3][: array.shape[2]]]  # BGR(A) read as if it were RGB(A)
    return to_gray_uint8(array, path)
