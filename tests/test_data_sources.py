"""Clinical inputs: multi-page TIFF, 12-bit PNG and TIFF, DICOM, videos, folders of patients."""

import struct
import zlib

import cv2
import numpy as np
import pytest

from lungseg.data.io import Depth, read_frame, read_image, stated_maximum
from lungseg.data.sources import find_sources, read_source
from lungseg.errors import DataError


def write_tiff_pages(path, pages):
    assert cv2.imwritemulti(str(path), list(pages))
    return path


def with_sbit(png_bytes, bits):
    """A PNG with an sBIT chunk (significant bits) inserted after its IHDR chunk."""
    body = bytes([bits])
    chunk = struct.pack(">I", len(body)) + b"sBIT" + body
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    end_of_ihdr = 8 + 8 + 13 + 4
    return png_bytes[:end_of_ihdr] + chunk + png_bytes[end_of_ihdr:]


def write_12_bit_png(path, array):
    ok, encoded = cv2.imencode(".png", array.astype(np.uint16))
    path.write_bytes(with_sbit(encoded.tobytes(), 12))
    return path


def write_video(path, n, shape=(48, 64), fourcc="MJPG", fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, shape[::-1], True)
    assert writer.isOpened()
    for index in range(n):
        writer.write(np.full((*shape, 3), 20 + 40 * index, np.uint8))
    writer.release()
    return path


def write_dicom(path, frames, bits=12, spacing=(0.2, 0.3), regions=None, photometric="MONOCHROME2"):
    """A DICOM file written by pydicom: one or several frames of uint16 (bits stored)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # ultrasound multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1:3]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if spacing:
        ds.PixelSpacing = list(spacing)
    if regions:
        region = Dataset()
        region.PhysicalUnitsXDirection = 3
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX, region.PhysicalDeltaY = regions
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    dtype = np.uint16 if bits > 8 else np.uint8
    ds.PixelData = frames.astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_multi_page_tiff_gives_one_frame_per_page(tmp_path):
    pages = [np.full((20, 30), 50 * k, np.uint8) for k in range(3)]
    source = read_source(write_tiff_pages(tmp_path / "stack.tif", pages))
    assert source.kind == "pages" and source.multi and len(source.frames) == 3
    for frame, page in zip(source.frames, pages):
        np.testing.assert_array_equal(frame, page)
    with pytest.raises(DataError, match=r"stack\.tif: holds 3 pages where one frame is expected"):
        read_image(tmp_path / "stack.tif")


def test_truncated_tiff_is_named_not_shortened(tmp_path):
    pages = [np.random.default_rng(k).integers(0, 256, (64, 64), dtype=np.uint8) for k in range(3)]
    data = write_tiff_pages(tmp_path / "full.tif", pages).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="cut.tif"):
        read_source(cut)


def test_12_bit_png_is_scaled_by_its_stated_range(tmp_path):
    array = np.array([[0, 1024, 2048, 4095]], np.uint16).repeat(4, axis=0)
    path = write_12_bit_png(tmp_path / "deep.png", array)
    assert stated_maximum(path) == 4095
    frame = read_source(path).frames[0]
    np.testing.assert_array_equal(frame[0], [0, 64, 128, 255])
    np.testing.assert_array_equal(read_image(path), frame)
    # without the sBIT chunk: values that fit 12 bits are taken as 12-bit, and said so
    cv2.imwrite(str(tmp_path / "plain.png"), array)
    frame, depth = read_frame(tmp_path / "plain.png")
    np.testing.assert_array_equal(frame[0], [0, 64, 128, 255])
    assert depth == Depth(16, 4095, "inferred", 4095)
    assert read_image(tmp_path / "plain.png", top=65535).max() == 16  # --max-value 65535
    # values that fit 10 bits: 10-bit; a value above 4095: the full 16-bit range
    cv2.imwrite(str(tmp_path / "ten.png"), np.array([[0, 341, 1023]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "ten.png")[0], [0, 85, 255])
    cv2.imwrite(str(tmp_path / "full.png"), np.array([[0, 4096, 65535]], np.uint16))
    assert read_frame(tmp_path / "full.png")[1].how == "full"
    # a value above the stated range: the file is not what it says
    bad = write_12_bit_png(tmp_path / "bad.png", np.array([[0, 5000]], np.uint16))
    with pytest.raises(DataError, match=r"bad\.png: holds values up to 5000, above the 4095"):
        read_source(bad)


def test_tiff_max_sample_value_states_the_range(tmp_path):
    import tifffile

    array = np.array([[0, 1023]], np.uint16).repeat(3, axis=0)
    path = tmp_path / "ten_bit.tif"
    tifffile.imwrite(path, array, extratags=[(281, "H", 1, 1023, False)])
    assert stated_maximum(path) == 1023
    np.testing.assert_array_equal(read_source(path).frames[0][0], [0, 255])


@pytest.mark.parametrize("suffix, fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_video_gives_every_frame(tmp_path, suffix, fourcc):
    source = read_source(write_video(tmp_path / f"cine{suffix}", 5, fourcc=fourcc))
    assert source.kind == "video" and len(source.frames) == 5 and source.fps == pytest.approx(10)
    frames = list(source.frames)  # decoded as iterated, as often as iterated
    assert len(frames) == 5 and len(list(source.frames)) == 5
    assert frames[0].shape == (48, 64) and frames[0].dtype == np.uint8
    assert abs(int(frames[4].mean()) - 180) < 8
    assert [len(chunk) for chunk in source.frames.chunks(2)] == [2, 2, 1]


def test_unreadable_video_is_named(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"broken\.mp4: not a readable video"):
        read_source(broken)


def test_multi_frame_dicom_with_spacing_and_bits_stored(tmp_path):
    frames = np.stack([np.full((16, 24), v, np.uint16) for v in (0, 2048, 4095)])
    source = read_source(write_dicom(tmp_path / "cine.dcm", frames, spacing=(0.2, 0.3)))
    assert source.kind == "dicom" and source.multi and len(source.frames) == 3
    assert source.spacing == (0.2, 0.3)
    assert [int(f[0, 0]) for f in source.frames] == [0, 128, 255]


def test_dicom_spacing_from_ultrasound_regions_and_monochrome1(tmp_path):
    frame = np.array([[0, 255]], np.uint8).repeat(2, axis=0)[None]
    path = write_dicom(tmp_path / "US0001", frame, bits=8, spacing=None, regions=(0.02, 0.05),
                       photometric="MONOCHROME1")  # no suffix: found by its DICM marker
    source = read_source(path)
    assert not source.multi
    assert source.spacing == pytest.approx((0.5, 0.2))  # rows: delta Y 0.05 cm; columns 0.02 cm
    np.testing.assert_array_equal(source.frames[0][0], [255, 0])


def test_broken_dicom_is_named(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(DataError, match=r"scan\.dcm: not a readable DICOM file"):
        read_source(path)


def test_find_sources_searches_patient_folders(tmp_path):
    for name in ("p1/a.png", "p1/b.dcm", "p2/visit/c.tif", "p2/notes.txt", ".hidden/d.png", "e.avi"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    sources, others = find_sources(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in sources] == [
        "e.avi", "p1/a.png", "p1/b.dcm", "p2/visit/c.tif"]
    assert [p.name for p in others] == ["notes.txt"]
