"""Reading frames and masks from disk into uint8 arrays, with one clear error per bad file."""

import logging
from pathlib import Path

import cv2
import numpy as np

from lungseg.errors import DataError
from lungseg.files import atomic_path

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# Hidden entries named in a folder's one line about them; more are counted.
HIDDEN_NAMES_SHOWN = 5


def list_image_files(folder):
    """``(files, skipped)``: ``folder``'s files with an image suffix, sorted by name, and one
    line for every other entry, naming it: a sub-folder, a file of another type, anything
    that is not a regular file. Hidden entries (``.DS_Store``, ``._img_1.tif``) share one
    line per folder. The readers of data folders report ``skipped`` as warnings.
    """
    folder = Path(folder)
    files, skipped, hidden = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            hidden.append(path.name)
        elif path.is_dir():
            skipped.append(f"{path}: a folder, not an image file; skipped")
        elif not path.is_file():
            skipped.append(f"{path}: not a regular file (a broken link?); skipped")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES)}); skipped")
        else:
            files.append(path)
    if hidden:
        shown = ", ".join(hidden[:HIDDEN_NAMES_SHOWN])
        if len(hidden) > HIDDEN_NAMES_SHOWN:
            shown += f" and {len(hidden) - HIDDEN_NAMES_SHOWN} more"
        noun = "entry" if len(hidden) == 1 else "entries"
        skipped.append(f"{folder}: {len(hidden)} hidden {noun} skipped ({shown})")
    return files, skipped


def read_image(path):
    """Read a frame as a 2-D uint8 gray array.

    8- and 16-bit gray, RGB and RGBA files are accepted: colour is converted to gray with
    OpenCV's luminance weights (as Keras' ``color_mode="grayscale"`` does), alpha is dropped
    and 16-bit values are scaled to 0-255.
    """
    return to_gray_uint8(decode_image(path), path)


def decode_image(path):
    """Decode an image file as stored (OpenCV channel order, any depth); one clear error if not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt, truncated or not an image file)")
    return array


def read_mask(path):
    """Read a binary mask as a 2-D uint8 array of 0 and 1.

    The mask is thresholded at half its maximum. A mask whose values are not two-valued
    (0 and one other level, as 0/255 or 0/1) is accepted only when thresholding is
    unambiguous; otherwise ``DataError`` says so with the threshold used.
    """
    gray = read_image(path)
    return binarize_mask(gray, path)


def binarize_mask(gray, path="<array>", tolerance=0.02):
    """Threshold a gray mask at half its maximum.

    Values near 0 or near the maximum (JPEG noise, anti-aliased edges) are thresholded with a
    warning. More than ``tolerance`` of the pixels in the ambiguous middle band (between a
    quarter and three quarters of the maximum) means the file is not a binary mask and raises
    ``DataError``. An all-zero mask is valid (no rib in the frame).
    """
    top = int(gray.max())
    if top == 0:
        return np.zeros(gray.shape, np.uint8)
    threshold = top / 2
    mask = (gray > threshold).astype(np.uint8)
    ambiguous = np.count_nonzero((gray > top / 4) & (gray < 3 * top / 4))
    if ambiguous > tolerance * gray.size:
        raise DataError(
            f"{path}: mask is not binary: {ambiguous / gray.size:.1%} of pixels lie between a "
            f"quarter and three quarters of its maximum {top} (thresholded at {threshold:g}, "
            "half the maximum)"
        )
    off_levels = np.count_nonzero((gray != 0) & (gray != top))
    if off_levels:
        logger.warning(
            "warning: %s: %.1f%% of mask pixels are neither 0 nor %d (compression noise?); "
            "thresholded at %g, half the maximum", path, 100 * off_levels / gray.size, top, threshold,
        )
    return mask


def to_gray_uint8(array, path="<array>"):
    """A decoded array (8/16-bit, gray/RGB/RGBA, OpenCV channel order) as 2-D uint8 gray."""
    if array.dtype == np.uint16:
        array = (array / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {array.dtype} (use 8- or 16-bit images)")
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 4:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            array = cv2.cvtColor(array, cv2.COLOR_BGR2GRAY)
        elif channels == 1:
            array = array[:, :, 0]
        else:
            raise DataError(f"{path}: unsupported number of channels {channels}")
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, got shape {array.shape}")
    return np.ascontiguousarray(array)


def write_image(path, array):
    """Write a uint8 array atomically (temporary name, then rename)."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix, np.asarray(array))
    if not ok:
        raise DataError(f"{path}: could not encode image as {path.suffix}")
    with atomic_path(path) as tmp:
        encoded.tofile(tmp)
