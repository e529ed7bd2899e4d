"""Reading frames from disk into uint8 gray arrays, with one clear error per bad file."""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lungseg.errors import DataError
from lungseg.files import atomic_path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
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


# Bit depths a 16-bit frame that states no range is taken to hold when its values fit them:
# scanners store 10- and 12-bit samples in 16-bit files, which scaled by 65535 come out almost
# black (a frame of 12-bit values under 1024 is taken as 10-bit; --max-value overrides).
INFERRED_BITS = (10, 12)


@dataclass(frozen=True)
class Depth:
    """How a frame's samples were scaled to 0-255: ``bits`` stored (8 or 16), the value
    ``top`` that became 255, and ``how`` it was chosen: ``"8-bit"``, ``"given"``
    (``--max-value``), ``"stated"`` (the file's sBIT or MaxSampleValue), ``"inferred"``
    (the values fit ``INFERRED_BITS``) or ``"full"`` (0-65535); ``peak`` is the largest value."""

    bits: int
    top: int
    how: str
    peak: int


def read_image(path, top=None):
    """Read a frame as a 2-D uint8 gray array (:func:`read_frame` without its :class:`Depth`)."""
    return read_frame(path, top)[0]


def read_frame(path, top=None):
    """``(gray, depth)``: a frame as a 2-D uint8 gray array and how its samples were scaled.

    8- and 16-bit gray, RGB and RGBA files are accepted: colour is converted to gray with
    OpenCV's luminance weights (as Keras' ``color_mode="grayscale"`` does), alpha is dropped
    and 16-bit values are scaled to 0-255 by their range: ``top`` when given, else the
    range the file states (:func:`stated_maximum`: a PNG's ``sBIT``, a TIFF's
    ``MaxSampleValue``), else the smallest of ``INFERRED_BITS`` their values fit, else the
    full 0-65535. A multi-page TIFF is refused (one frame is expected here;
    ``lungseg.data.sources.read_source`` reads every page).
    """
    array = decode_image(path)
    depth = frame_depth(array, path, top)
    return to_gray_uint8(array, path, depth.top if depth.bits == 16 else None), depth


def frame_depth(array, path=None, top=None):
    """The :class:`Depth` a decoded frame is scaled with (see :func:`read_frame`)."""
    peak = int(array.max()) if array.size else 0
    if array.dtype != np.uint16:
        return Depth(8, 255, "8-bit", peak)
    if top is not None:
        return Depth(16, int(top), "given", peak)
    stated = stated_maximum(path) if path is not None else None
    if stated is not None:
        return Depth(16, stated, "stated", peak)
    for bits in INFERRED_BITS:
        if 0 < peak < 1 << bits:
            return Depth(16, (1 << bits) - 1, "inferred", peak)
    return Depth(16, 65535, "full", peak)


def describe_depths(depths, folder):
    """One line on the bit depth of a set of frames (``data check`` prints it), and a warning
    line when 16-bit frames were scaled by a range inferred from their values, else None."""
    depths = list(depths)
    if not depths:
        return "no frames", None
    deep = [d for d in depths if d.bits == 16]
    if not deep:
        return "8-bit", None
    peak = max(d.peak for d in deep)
    tops = sorted({d.top for d in deep})
    hows = sorted({d.how for d in deep})
    ranges = " or ".join(f"0-{top}" for top in tops)
    line = f"16-bit ({len(deep)} of {len(depths)} frames), values up to {peak}, scaled by {ranges} ({', '.join(hows)})"
    inferred = [d for d in deep if d.how == "inferred"]
    if not inferred:
        return line, None
    bits = sorted({d.top.bit_length() for d in inferred})
    warning = (
        f"{folder}: {len(inferred)} 16-bit frame(s) state no range (no sBIT or MaxSampleValue) "
        f"and their values fit {' or '.join(map(str, bits))} bits (up to "
        f"{max(d.peak for d in inferred)}): scaled as {'/'.join(map(str, bits))}-bit; give "
        "--max-value if that is wrong"
    )
    if len(bits) > 1:
        warning += " (frames of one set were scaled differently: give --max-value)"
    return line, warning


def decode_image(path):
    """Decode an image file as stored (OpenCV channel order, any depth); one clear error if not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    data = np.fromfile(path, dtype=np.uint8)
    if path.suffix.lower() in TIFF_SUFFIXES:
        pages = decode_pages(path, data)
        if len(pages) > 1:
            raise DataError(f"{path}: holds {len(pages)} pages where one frame is expected")
        return pages[0]
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt, truncated or not an image file)")
    return array


def decode_pages(path, data=None):
    """Every page of a (multi-page) TIFF as decoded arrays; ``DataError`` unless all decode."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if data is None else data
    try:
        ok, pages = cv2.imdecodemulti(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        ok, pages = False, []
    pages = [page for page in (pages or []) if page is not None and page.size]
    if not ok or not pages:
        raise DataError(f"{path}: not a readable image (corrupt, truncated or not an image file)")
    expected = _tiff_page_count(path)
    if expected is not None and len(pages) != expected:
        raise DataError(f"{path}: only {len(pages)} of its {expected} pages could be decoded")
    return list(pages)


def _tiff_page_count(path):
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            return len(tiff.pages)
    except Exception:  # tifffile missing or the file beyond it: trust OpenCV's count
        return None


def stated_maximum(path):
    """The largest value a 16-bit file says its samples reach, or None when it says nothing.

    PNG: ``2**bits - 1`` from the ``sBIT`` chunk (significant bits, e.g. 12). TIFF: the
    ``MaxSampleValue`` (or ``SMaxSampleValue``) tag. Scanners store 10-, 12- or 14-bit
    frames in 16-bit files; scaled by 65535 they come out almost black.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            bits = _png_significant_bits(path.read_bytes())
            return (1 << bits) - 1 if bits else None
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                tags = tiff.pages[0].tags
                for name in ("MaxSampleValue", "SMaxSampleValue"):
                    if name in tags:
                        value = tags[name].value
                        value = max(value) if isinstance(value, (tuple, list)) else value
                        if 0 < int(value) < 65535:
                            return int(value)
    except (OSError, ValueError, ImportError):
        return None
    return None


def _png_significant_bits(data):
    """Significant bits of a 16-bit PNG's colour channels from its sBIT chunk, or None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33:
        return None
    bit_depth, colour_type = data[24], data[25]
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if kind == b"sBIT" and bit_depth == 16:
            colours = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(colour_type, 1)
            bits = max(body[:colours]) if body else 0
            return bits if 0 < bits < 16 else None
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def to_gray_uint8(array, path="<array>", top=None):
    """A decoded array (8/16-bit, gray/RGB/RGBA, OpenCV channel order) as 2-D uint8 gray.

    16-bit values are scaled so that ``top`` (default 65535, the full range) becomes 255; a
    value above ``top`` raises ``DataError``, as the file then is not what it says.
    """
    if array.dtype == np.uint16:
        top = 65535 if top is None else int(top)
        if top < 65535 and array.size and int(array.max()) > top:
            raise DataError(f"{path}: holds values up to {int(array.max())}, above the "
                            f"{top} its bit depth states")
        array = (array / (top / 255.0)).round().astype(np.uint8)
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
