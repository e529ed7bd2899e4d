"""Clinical inputs: every frame of an image, multi-page TIFF, DICOM or cine video, and its spacing.

``read_source(path)`` gives a :class:`Source`: its frames as 2-D uint8 gray arrays, the pixel
spacing in mm when the file states it (DICOM), and the frame rate of a video. An image or DICOM
file is read whole or not at all: a page, frame or byte that cannot be decoded raises
``DataError`` naming the file, never a shorter list.

* Images (``IMAGE_SUFFIXES``): one frame; a TIFF gives one frame per page. 16-bit samples
  are scaled by the range the file states (PNG ``sBIT``, TIFF ``MaxSampleValue``), or by
  ``top`` when the caller knows it (``--max-value``), else by 1023 or 4095 when the values
  fit 10 or 12 bits, else by 65535 (``Source.depth`` says which).
* DICOM (``.dcm``, ``.dicom`` or any file with the ``DICM`` marker), through pydicom: single
  and multi-frame, scaled by ``BitsStored``, MONOCHROME1 inverted, colour made gray; the
  spacing from ``PixelSpacing``, else from the first ultrasound region's physical deltas
  (``SequenceOfUltrasoundRegions``, in cm).
* Videos (``.mp4``, ``.avi``, ``.mov``) through OpenCV: every frame, made gray, decoded as it
  is used (:class:`VideoFrames`), so a long cine is never held in memory whole. A video that
  cannot be opened or whose first frame cannot be decoded fails at once; one that ends early
  raises ``DataError`` when the iteration reaches its end.

``find_sources(folder)`` lists the readable-looking files below a folder, recursively, and the
ones of other types, so that a caller can name each file it skips.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lungseg.data.io import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    decode_pages,
    frame_depth,
    read_frame,
    to_gray_uint8,
)
from lungseg.errors import DataError, first_line

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")
DICOM_SUFFIXES = (".dcm", ".dicom")
SOURCE_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES + VIDEO_SUFFIXES
# DICOM's physical units code for centimetres (PhysicalUnitsXDirection), PS3.3 C.8.5.5.1.
DICOM_CM = 3


@dataclass
class Source:
    """The frames of one input file."""

    path: Path
    kind: str  # "image", "pages" (multi-page TIFF), "dicom" or "video"
    frames: list  # 2-D uint8 arrays; a video's VideoFrames, decoded as iterated
    spacing: tuple = None  # (row mm, column mm) of one pixel, when known
    fps: float = None  # frames per second of a video
    depth: object = None  # how an image's samples were scaled (lungseg.data.io.Depth)

    @property
    def multi(self):
        """Whether the file holds (or may hold) several frames, named by number."""
        return self.kind in ("pages", "video") or (self.kind == "dicom" and len(self.frames) > 1)


def is_dicom(path):
    """A file with a DICOM suffix or the ``DICM`` marker after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_source(path):
    path = Path(path)
    return path.suffix.lower() in SOURCE_SUFFIXES or is_dicom(path)


def find_sources(folder):
    """(frame files, files of other types) below ``folder``, recursively, sorted by path.

    Hidden files and folders (names starting with ``.``) are left out of both lists.
    """
    folder = Path(folder)
    sources, others = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (sources if is_source(path) else others).append(path)
    return sources, others


def read_source(path, top=None):
    """Every frame of ``path`` (see the module's description); ``DataError`` naming it if not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return read_video(path)
    if is_dicom(path):
        return read_dicom(path)
    if suffix in TIFF_SUFFIXES:
        pages = decode_pages(path)
        depth = frame_depth(max(pages, key=lambda page: page.max()), path, top)
        frames = [to_gray_uint8(page, f"{path} page {index}", depth.top if depth.bits == 16 else None)
                  for index, page in enumerate(pages, start=1)]
        return Source(path, "pages" if len(frames) > 1 else "image", frames, depth=depth)
    if suffix in IMAGE_SUFFIXES:
        frame, depth = read_frame(path, top)
        return Source(path, "image", [frame], depth=depth)
    raise DataError(f"{path}: unsupported file type (expected one of {', '.join(SOURCE_SUFFIXES)} "
                    "or a DICOM file)")


def read_video(path):
    """A video's :class:`Source`, its frames decoded when iterated; ``DataError`` if it cannot be
    opened or its first frame cannot be decoded."""
    frames = VideoFrames(path)
    return Source(Path(path), "video", frames, fps=frames.fps)


class VideoFrames:
    """The frames of a video, gray, decoded one at a time each time they are iterated.

    ``len()`` is the frame count the container states (0 when it states none). Iterating
    raises ``DataError`` when fewer frames than stated could be decoded (a truncated video),
    after yielding those that could.
    """

    def __init__(self, path):
        self.path = Path(path)
        capture = self._open()
        try:
            self.count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0) or None
            if not capture.read()[0]:
                raise DataError(f"{self.path}: not a readable video (no frame could be decoded)")
        finally:
            capture.release()

    def _open(self):
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise DataError(f"{self.path}: not a readable video (OpenCV could not open it)")
        return capture

    def __len__(self):
        return self.count

    def __iter__(self):
        capture = self._open()
        decoded = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                decoded += 1
                yield to_gray_uint8(frame, f"{self.path} frame {decoded}")
        finally:
            capture.release()
        if self.count > 0 and decoded < self.count:
            raise DataError(f"{self.path}: only {decoded} of its {self.count} frames could be decoded "
                            "(truncated or corrupt video)")

    def chunks(self, size):
        """Lists of up to ``size`` consecutive frames; a truncated video's last frames come out
        before its ``DataError``."""
        chunk = []
        try:
            for frame in self:
                chunk.append(frame)
                if len(chunk) == size:
                    yield chunk
                    chunk = []
        except DataError:
            if chunk:
                yield chunk
            raise
        if chunk:
            yield chunk


def read_dicom(path):
    """Frames and pixel spacing of a DICOM file (single or multi-frame), through pydicom."""
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from None
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises InvalidDicomError, EOFError, ValueError...
        raise DataError(f"{path}: not a readable DICOM file ({first_line(error)})") from None
    if "PixelData" not in dataset:
        raise DataError(f"{path}: DICOM file holds no image (no PixelData)")
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise DataError(f"{path}: cannot decode its pixel data ({name}: {first_line(error)})") from None
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if count == 1:
        pixels = pixels[None]
    if pixels.shape[0] != count:
        raise DataError(f"{path}: holds {pixels.shape[0]} of its {count} frames")
    if int(dataset.get("PixelRepresentation", 0) or 0) == 1:
        raise DataError(f"{path}: signed pixel values are not supported in ultrasound frames")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8)
    frames = []
    for index, frame in enumerate(pixels, start=1):
        name = f"{path} frame {index}"
        if samples == 3:  # pydicom gives RGB (YBR converted)
            frame = frame[..., ::-1]  # to OpenCV's BGR, which to_gray_uint8 expects
        if bits <= 8:
            frame = frame.astype(np.uint8)
            gray = to_gray_uint8(np.ascontiguousarray(frame), name)
        else:
            gray = to_gray_uint8(np.ascontiguousarray(frame.astype(np.uint16)), name, (1 << bits) - 1)
        if photometric == "MONOCHROME1":  # 0 is white
            gray = 255 - gray
        frames.append(gray)
    return Source(Path(path), "dicom", frames, spacing=dicom_spacing(dataset))


def dicom_spacing(dataset):
    """(row mm, column mm) of one pixel: ``PixelSpacing``, else the first ultrasound region's
    ``PhysicalDeltaY``/``PhysicalDeltaX`` when its units are centimetres; else None."""
    spacing = dataset.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
        return float(spacing[0]), float(spacing[1])
    for region in dataset.get("SequenceOfUltrasoundRegions", None) or []:
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        deltas = (region.get("PhysicalDeltaY"), region.get("PhysicalDeltaX"))
        if units == (DICOM_CM, DICOM_CM) and all(d is not None and float(d) > 0 for d in deltas):
            return float(deltas[0]) * 10.0, float(deltas[1]) * 10.0
    return None
