"""Frame indexing, ranged frame reads and single-frame decoding against pydicom."""
from __future__ import annotations

import io
import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from gateway.imaging import (
    FrameIndex,
    PixelDataError,
    decode_frame,
    frame_as_explicit_le,
    frame_media_type,
    index_pixel_data,
    read_stored_frame,
)
from gateway.imaging import pixeldata
from tests.data import sample_file as find_test_file

# (file, transfer syntax it must have): native in every byte order / VR
# variant, then every compressed family that pydicom and pydicom-data ship
NATIVE_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_padded.dcm",
    "emri_small.dcm",
    "emri_small_big_endian.dcm",
    "SC_rgb.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_expb_2frame.dcm",
    "SC_rgb_16bit_2frame.dcm",
    "SC_rgb_expb_16bit_2frame.dcm",
    "SC_rgb_expb_32bit_2frame.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "OBXXXX1A_expb_2frame.dcm",
    "color-pl.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_ybr_full_uncompressed.dcm",
    "liver.dcm",
    "liver_expb.dcm",
    "rtdose.dcm",
    "rtdose_expb.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "eCT_Supplemental.dcm",
    "OT-PAL-8-face.dcm",
]
ENCAPSULATED_FILES = [
    # RLE
    "MR_small_RLE.dcm",
    "emri_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "rtdose_rle.dcm",
    # JPEG baseline / extended
    "SC_rgb_jpeg.dcm",  # stored implicit VR although its transfer syntax is explicit
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "examples_ybr_color.dcm",  # 30 frames, with Basic Offset Table
    "JPGExtended.dcm",
    # JPEG lossless
    "JPEG-LL.dcm",  # 2 fragments, 1 frame
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    # JPEG-LS
    "MR_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    # JPEG 2000
    "MR_small_jp2klossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "US1_J2KR.dcm",  # 3 fragments, YBR_RCT
    "US1_J2KI.dcm",
    "JPEG2000.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "693_J2KI.dcm",
    "explicit_VR-UN.dcm",
]


def path_of(name: str) -> Path:
    try:
        return find_test_file(name)
    except FileNotFoundError:
        pytest.skip(f"{name} is not installed (pydicom-data missing?)")


def require_codec(transfer_syntax: str) -> None:
    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return
    decoder = get_decoder(uid)
    if not decoder.is_available:
        pytest.skip(f"no decoder for {uid.name} installed: {decoder.missing_dependencies}")


@lru_cache(maxsize=None)
def header_of(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


@lru_cache(maxsize=None)
def full_of(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        # No file meta: tell pixel_array how the file was actually read
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


@lru_cache(maxsize=None)
def reference_array(path: Path) -> np.ndarray:
    """pixel_array, always shaped (frames, rows, columns[, samples])."""
    ds = full_of(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[None]


def index_of(path: Path) -> FrameIndex:
    with path.open("rb") as fp:
        index = index_pixel_data(fp, header_of(path))
    assert index is not None
    return index


def sample_frames(count: int) -> list[int]:
    return sorted({1, (count + 1) // 2, count})


class RecordingFile(io.BytesIO):
    """A file that remembers every (offset, size) it was read at."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        offset = self.tell()
        data = super().read(size)
        self.reads.append((offset, len(data)))
        return data


def save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_dataset(transfer_syntax: str, **elements: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def index_bytes(data: bytes) -> tuple[Dataset, FrameIndex]:
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    index = index_pixel_data(io.BytesIO(data), header)
    assert index is not None
    return header, index


# --- real files -------------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE_FILES + ENCAPSULATED_FILES)
def test_decode_frame_matches_pixel_array(name: str) -> None:
    path = path_of(name)
    header = header_of(path)
    index = index_of(path)
    require_codec(index.transfer_syntax)
    reference = reference_array(path)
    assert index.number_of_frames == reference.shape[0]
    with path.open("rb") as fp:
        for number in sample_frames(index.number_of_frames):
            arr = decode_frame(fp, header, index, number)
            assert arr.shape == reference[number - 1].shape
            assert arr.dtype.kind == reference.dtype.kind
            np.testing.assert_array_equal(arr, reference[number - 1], err_msg=f"{name} frame {number}")


@pytest.mark.parametrize("name", ENCAPSULATED_FILES)
def test_encapsulated_stored_frames_equal_pydicom_frames(name: str) -> None:
    path = path_of(name)
    index = index_of(path)
    assert index.encapsulated and index.pixel_data_length is None
    expected = list(
        generate_frames(full_of(path).PixelData, number_of_frames=index.number_of_frames)
    )
    with path.open("rb") as fp:
        stored = [read_stored_frame(fp, index, n) for n in range(1, index.number_of_frames + 1)]
    assert stored == expected[: index.number_of_frames]


@pytest.mark.parametrize("name", NATIVE_FILES)
def test_native_stored_frames_are_slices_of_pixel_data(name: str) -> None:
    path = path_of(name)
    index = index_of(path)
    pixel_data = full_of(path).PixelData
    assert not index.encapsulated and index.pixel_data_length == len(pixel_data)
    with path.open("rb") as fp:
        for number in range(1, index.number_of_frames + 1):
            ((offset, length),) = index.frames[number - 1]
            start = offset - index.pixel_data_offset
            assert read_stored_frame(fp, index, number) == pixel_data[start : start + length]


def test_ybr_full_422_native_frame_size_is_two_thirds() -> None:
    index = index_of(path_of("SC_ybr_full_422_uncompressed.dcm"))
    assert index.frames == [[(index.pixel_data_offset, 100 * 100 * 2)]]


@pytest.mark.parametrize(
    "name", ["emri_small.dcm", "emri_small_big_endian.dcm", "emri_small_RLE.dcm",
             "emri_small_jpeg_2k_lossless.dcm", "examples_ybr_color.dcm", "liver.dcm"]
)
def test_one_frame_read_touches_only_that_frame(name: str) -> None:
    path = path_of(name)
    header = header_of(path)
    index = index_of(path)
    require_codec(index.transfer_syntax)
    number = index.number_of_frames // 2 + 1
    ranges = index.frames[number - 1]
    for operation in (read_stored_frame, decode_frame, frame_as_explicit_le):
        fp = RecordingFile(path.read_bytes())
        if operation is read_stored_frame:
            operation(fp, index, number)
        else:
            operation(fp, header, index, number)
        assert fp.reads, operation.__name__
        for offset, size in fp.reads:
            assert any(
                start <= offset and offset + size <= start + length for start, length in ranges
            ), f"{operation.__name__} read {size} bytes at {offset}, outside {ranges}"
        assert sum(size for _, size in fp.reads) == sum(length for _, length in ranges)


def test_indexing_reads_headers_not_pixel_data() -> None:
    path = path_of("emri_small.dcm")
    fp = RecordingFile(path.read_bytes())
    index = index_pixel_data(fp, header_of(path))
    assert index is not None
    # Element headers are read in 16 KiB chunks; the pixel data is 80 KiB
    assert sum(size for _, size in fp.reads) <= 2 * 16384 < (index.pixel_data_length or 0)


def test_json_round_trip_and_compactness() -> None:
    single = index_of(path_of("CT_small.dcm"))
    text = single.to_json()
    assert len(text) < 120
    assert FrameIndex.from_json(text) == single

    native = index_of(path_of("emri_small.dcm"))
    text = native.to_json()
    assert "fs" in json.loads(text) and len(text) < 130
    assert FrameIndex.from_json(text) == native

    encapsulated = index_of(path_of("examples_ybr_color.dcm"))
    assert FrameIndex.from_json(encapsulated.to_json()) == encapsulated

    with pytest.raises(PixelDataError, match="malformed frame index"):
        FrameIndex.from_json('{"v":1,"ts":"1.2.840.10008.1.2.1"}')


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_no_pixel_data_gives_none(name: str) -> None:
    path = path_of(name)
    with path.open("rb") as fp:
        assert index_pixel_data(fp, header_of(path)) is None


def test_frame_number_out_of_range() -> None:
    path = path_of("CT_small.dcm")
    index = index_of(path)
    with path.open("rb") as fp:
        for number in (0, 2, -1):
            with pytest.raises(PixelDataError, match=rf"frame {number} requested, instance has 1 frame$"):
                read_stored_frame(fp, index, number)
    multi = index_of(path_of("emri_small.dcm"))
    with pytest.raises(PixelDataError, match="frame 11 requested, instance has 10 frames"):
        decode_frame(io.BytesIO(), header_of(path_of("emri_small.dcm")), multi, 11)


def test_truncated_native_pixel_data_is_rejected_at_index_time() -> None:
    path = path_of("MR_truncated.dcm")
    with path.open("rb") as fp, pytest.raises(PixelDataError, match="truncated"):
        index_pixel_data(fp, header_of(path))


def test_missing_sequence_delimiter_is_tolerated() -> None:
    # pydicom cannot even read this file's pixel data
    short = path_of("emri_small_jpeg_2k_lossless_too_short.dcm")
    require_codec("1.2.840.10008.1.2.4.90")
    index = index_of(short)
    reference = reference_array(path_of("emri_small_jpeg_2k_lossless.dcm"))
    with short.open("rb") as fp:
        np.testing.assert_array_equal(decode_frame(fp, header_of(short), index, 10), reference[9])


def test_undecodable_codestream_gives_pixel_data_error() -> None:
    # pydicom's own pixel_array fails on this file's codestream too
    path = path_of("JPEG-lossy.dcm")
    index = index_of(path)
    with path.open("rb") as fp, pytest.raises(PixelDataError, match="frame 1 .* could not be decoded"):
        decode_frame(fp, header_of(path), index, 1)


def test_missing_codec_message(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg-libjpeg"]

    monkeypatch.setattr(pixeldata, "get_decoder", lambda uid: Unavailable())
    path = path_of("MR_small_jpeg_ls_lossless.dcm")
    index = index_of(path)
    with path.open("rb") as fp, pytest.raises(
        PixelDataError,
        match=r"^transfer syntax 1\.2\.840\.10008\.1\.2\.4\.80 cannot be decoded: install pylibjpeg-libjpeg$",
    ):
        decode_frame(fp, header_of(path), index, 1)


def test_deflated_is_unindexed_and_falls_back() -> None:
    path = path_of("image_dfl.dcm")
    header = header_of(path)
    index = index_of(path)
    assert index.frames == [] and not index.indexed
    assert FrameIndex.from_json(index.to_json()) == index
    with path.open("rb") as fp:
        with pytest.raises(PixelDataError, match="no position in the file"):
            read_stored_frame(fp, index, 1)
        np.testing.assert_array_equal(decode_frame(fp, header, index, 1), reference_array(path)[0])
        frame = frame_as_explicit_le(fp, header, index, 1)
    assert frame.data == full_of(path).PixelData
    assert frame.photometric_interpretation == "MONOCHROME2"


# --- Explicit VR Little Endian output ---------------------------------------


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "emri_small.dcm", "color-pl.dcm", "SC_ybr_full_422_uncompressed.dcm"],
)
def test_explicit_le_native_little_endian_is_stored_bytes(name: str) -> None:
    path = path_of(name)
    header = header_of(path)
    index = index_of(path)
    with path.open("rb") as fp:
        frame = frame_as_explicit_le(fp, header, index, index.number_of_frames)
        assert frame.data == read_stored_frame(fp, index, index.number_of_frames)
    assert frame.photometric_interpretation == header.PhotometricInterpretation
    assert frame.planar_configuration == header.get("PlanarConfiguration")


@pytest.mark.parametrize(
    "name",
    ["MR_small_bigendian.dcm", "emri_small_big_endian.dcm", "SC_rgb_expb_32bit_2frame.dcm",
     "OBXXXX1A_expb_2frame.dcm", "SC_rgb_small_odd_big_endian.dcm", "rtdose_expb.dcm"],
)
def test_explicit_le_big_endian_is_swapped(name: str) -> None:
    path = path_of(name)
    header = header_of(path)
    index = index_of(path)
    reference = reference_array(path)
    with path.open("rb") as fp:
        for number in sample_frames(index.number_of_frames):
            frame = frame_as_explicit_le(fp, header, index, number)
            expected = reference[number - 1]
            assert frame.data == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize(
    "name, photometric",
    [
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", "RGB"),  # YBR_FULL_422 JPEG
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),  # YBR_FULL JPEG
        ("US1_J2KR.dcm", "RGB"),  # YBR_RCT
        ("emri_small_jpeg_ls_lossless.dcm", "MONOCHROME2"),
        ("SC_rgb_rle_16bit_2frame.dcm", "RGB"),
    ],
)
def test_explicit_le_decodes_compressed(name: str, photometric: str) -> None:
    path = path_of(name)
    header = header_of(path)
    index = index_of(path)
    require_codec(index.transfer_syntax)
    reference = reference_array(path)
    with path.open("rb") as fp:
        frame = frame_as_explicit_le(fp, header, index, index.number_of_frames)
    expected = reference[-1]
    assert frame.data == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
    assert frame.photometric_interpretation == photometric
    assert frame.planar_configuration == (0 if header.SamplesPerPixel == 3 else None)


# --- synthetic files for cases no shipped file covers --------------------------


@pytest.fixture(scope="module")
def j2k_frames() -> tuple[Dataset, list[bytes]]:
    path = path_of("emri_small_jpeg_2k_lossless.dcm")
    require_codec("1.2.840.10008.1.2.4.90")
    ds = full_of(path)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=10))


def _j2k_copy(source: Dataset, pixel_data: bytes, **extra: object) -> bytes:
    ds = make_dataset(
        "1.2.840.10008.1.2.4.90",
        Rows=source.Rows, Columns=source.Columns, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=source.BitsAllocated,
        BitsStored=source.BitsStored, HighBit=source.HighBit,
        PixelRepresentation=source.PixelRepresentation, NumberOfFrames=10, **extra,
    )
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    return save(ds)


@pytest.mark.parametrize(
    "layout",
    ["extended_offset_table", "bot_3_fragments_per_frame", "eoi_3_fragments_per_frame"],
)
def test_fragment_to_frame_mapping(j2k_frames, layout: str) -> None:
    source, frames = j2k_frames
    if layout == "extended_offset_table":
        pixel_data, offsets, lengths = encapsulate_extended(frames)
        data = _j2k_copy(source, pixel_data, ExtendedOffsetTable=offsets,
                         ExtendedOffsetTableLengths=lengths)
    else:
        pixel_data = encapsulate(frames, fragments_per_frame=3,
                                 has_bot=layout.startswith("bot"))
        data = _j2k_copy(source, pixel_data)
    header, index = index_bytes(data)
    assert len(index.frames) == 10
    fragments = 1 if layout == "extended_offset_table" else 3
    assert all(len(ranges) == fragments for ranges in index.frames)
    reference = reference_array(path_of("emri_small_jpeg_2k_lossless.dcm"))
    fp = io.BytesIO(data)
    for number in (1, 4, 10):
        # encapsulate() pads odd-length frames with one byte
        assert read_stored_frame(fp, index, number).rstrip(b"\0") == frames[number - 1].rstrip(b"\0")
        np.testing.assert_array_equal(decode_frame(fp, header, index, number), reference[number - 1])


def test_wrong_basic_offset_table_is_ignored(j2k_frames) -> None:
    source, frames = j2k_frames
    pixel_data = bytearray(encapsulate(frames, has_bot=True))
    pixel_data[12:16] = (7).to_bytes(4, "little")  # frame 2 offset points mid-fragment
    header, index = index_bytes(_j2k_copy(source, bytes(pixel_data)))
    assert len(index.frames) == 10 and all(len(ranges) == 1 for ranges in index.frames)


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_bit_packed_frames_not_on_byte_boundaries(transfer_syntax: str) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 2, size=(3, 3, 5), dtype=np.uint8)  # 15 bits per frame
    ds = make_dataset(
        transfer_syntax, Rows=3, Columns=5, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=1, BitsStored=1, HighBit=0,
        PixelRepresentation=0, NumberOfFrames=3, PixelData=pack_bits(arr),
    )
    ds["PixelData"].VR = "OB"
    header, index = index_bytes(save(ds))
    # bits 0-14, 15-29 and 30-44: bytes 0-1, 1-3 and 3-5
    assert [ranges[0] for ranges in index.frames] == [
        (index.pixel_data_offset, 2), (index.pixel_data_offset + 1, 3),
        (index.pixel_data_offset + 3, 3),
    ]
    fp = io.BytesIO(save(ds))
    for number in (1, 2, 3):
        np.testing.assert_array_equal(decode_frame(fp, header, index, number), arr[number - 1])
        frame = frame_as_explicit_le(fp, header, index, number)
        assert frame.data == pack_bits(arr[number - 1])


def test_big_endian_8bit_ow_odd_length_frames() -> None:
    arr = np.arange(3 * 3 * 3, dtype=np.uint8).reshape(3, 3, 3)  # 9-byte frames
    padded = arr.tobytes() + b"\0"
    swapped = np.frombuffer(padded, "<u2").byteswap().tobytes()
    ds = make_dataset(
        "1.2.840.10008.1.2.2", Rows=3, Columns=3, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=8, BitsStored=8, HighBit=7,
        PixelRepresentation=0, NumberOfFrames=3,
    )
    ds.PixelData = swapped
    ds["PixelData"].VR = "OW"
    data = save(ds)
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    np.testing.assert_array_equal(reference, arr)
    header, index = index_bytes(data)
    fp = io.BytesIO(data)
    for number in (1, 2, 3):
        np.testing.assert_array_equal(decode_frame(fp, header, index, number), arr[number - 1])
        assert frame_as_explicit_le(fp, header, index, number).data == arr[number - 1].tobytes()


def test_float_pixel_data() -> None:
    arr = np.linspace(-1, 1, 2 * 4 * 6, dtype="<f4").reshape(2, 4, 6)
    ds = make_dataset(
        "1.2.840.10008.1.2.1", Rows=4, Columns=6, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=32, NumberOfFrames=2,
        FloatPixelData=arr.tobytes(),
    )
    header, index = index_bytes(save(ds))
    assert index.pixel_data_tag == 0x7FE00008
    assert FrameIndex.from_json(index.to_json()) == index
    fp = io.BytesIO(save(ds))
    np.testing.assert_array_equal(decode_frame(fp, header, index, 2), arr[1])


@pytest.mark.parametrize("transfer_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_undefined_length_sequences_before_pixel_data(transfer_syntax: str) -> None:
    arr = np.arange(-8, 8, dtype=np.int16).reshape(4, 4)
    inner = Dataset()
    inner.CodeValue = "1"
    item = Dataset()
    item.ConceptNameCodeSequence = [inner]
    item.is_undefined_length_sequence_item = True
    ds = make_dataset(
        transfer_syntax, Rows=4, Columns=4, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
        PixelRepresentation=1, ContentSequence=[item],
    )
    ds["ContentSequence"].is_undefined_length = True
    item["ConceptNameCodeSequence"].is_undefined_length = True
    # pydicom writes the pixel data value as given
    ds.PixelData = arr.astype(">i2" if transfer_syntax.endswith("1.2.2") else "<i2").tobytes()
    ds["PixelData"].VR = "OW"
    data = save(ds)
    delimiter = b"\xff\xfe\xe0\xdd" if transfer_syntax.endswith("1.2.2") else b"\xfe\xff\xdd\xe0"
    assert data.count(delimiter) == 2  # both sequences really have undefined length
    header, index = index_bytes(data)
    np.testing.assert_array_equal(decode_frame(io.BytesIO(data), header, index, 1), arr)


# --- media types ------------------------------------------------------------


def test_frame_media_types() -> None:
    assert frame_media_type("1.2.840.10008.1.2.1") == "application/octet-stream"
    assert frame_media_type("1.2.840.10008.1.2") == "application/octet-stream"
    assert frame_media_type("1.2.840.10008.1.2.2") == "application/octet-stream"
    assert frame_media_type("1.2.840.10008.1.2.4.50") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.70") == "image/jpeg"
    assert frame_media_type("1.2.840.10008.1.2.4.80") == "image/jls"
    assert frame_media_type("1.2.840.10008.1.2.4.90") == "image/jp2"
    assert frame_media_type("1.2.840.10008.1.2.4.92") == "image/jpx"
    assert frame_media_type("1.2.840.10008.1.2.4.201") == "image/jphc"
    assert frame_media_type("1.2.840.10008.1.2.5") == "image/dicom-rle"
    assert frame_media_type("1.2.840.10008.1.2.4.110") == "image/jxl"  # unknown to pydicom 3.0
    with pytest.raises(PixelDataError, match="1.2.3.4"):
        frame_media_type("1.2.3.4")


def test_undefined_length_un_element_is_implicit_inside() -> None:
    """PS3.5 6.2.2: undefined length UN content is Implicit VR Little Endian,
    even in an explicit VR dataset."""
    arr = np.arange(16, dtype=np.uint16).reshape(4, 4)
    ds = make_dataset(
        "1.2.840.10008.1.2.1", Rows=4, Columns=4, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
        PixelRepresentation=0, PixelData=arr.tobytes(),
    )
    data = save(ds)

    def implicit(group: int, elem: int, value: bytes, length: int | None = None) -> bytes:
        size = len(value) if length is None else length
        return group.to_bytes(2, "little") + elem.to_bytes(2, "little") + size.to_bytes(4, "little") + value

    undefined = 0xFFFFFFFF
    nested_sequence = (
        implicit(0x0008, 0x1115, b"", undefined)
        + implicit(0xFFFE, 0xE000, implicit(0x0008, 0x0100, b"AB"))
        + implicit(0xFFFE, 0xE0DD, b"")
    )
    un_value = (
        implicit(0xFFFE, 0xE000, b"", undefined)
        + implicit(0x0008, 0x0100, b"CD")
        + nested_sequence
        + implicit(0xFFFE, 0xE00D, b"")
        + implicit(0xFFFE, 0xE0DD, b"")
    )
    private = (
        b"\xdf\x7f\x10\x00LO\x04\x00TEST"
        + b"\xdf\x7f\x01\x10UN\x00\x00" + undefined.to_bytes(4, "little") + un_value
    )
    at = data.index(b"\xe0\x7f\x10\x00")
    data = data[:at] + private + data[at:]
    header, index = index_bytes(data)
    assert index.pixel_data_offset == len(data) - 32
    np.testing.assert_array_equal(decode_frame(io.BytesIO(data), header, index, 1), arr)
