"""The transcoding service: stored instances as Explicit/Implicit VR Little Endian, streamed
frame by frame, compared with what pydicom itself makes of the same files; its memory bound;
its errors; and its two users (WADO-RS retrieve in process, C-STORE to a pynetdicom SCP)."""
from __future__ import annotations

import hashlib
import io
import logging
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         generate_uid)

from auth.base import EMBEDDED_PRINCIPAL
from dicomweb.multipart import MultipartReader, parse_boundary
from gateway.config import load_settings
from gateway.errors import BadRequest
from gateway.headers import dataset_offset
from gateway.services.transcode import TranscodeError, _BitConcatenator
from tests.data import sample_file

EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
TARGETS = [EXPLICIT, IMPLICIT]

# One or more per family: native little/big endian and implicit, deflated, JPEG baseline (RGB,
# YBR_FULL, YBR_FULL_422, multi-frame), JPEG extended and lossless, JPEG-LS lossless and
# near-lossless, JPEG 2000 lossless/lossy (YBR_RCT/ICT), RLE (8/16/32 bits, multi-frame), 1-bit
# (little and big endian), native YBR_FULL_422 and planar colour, palette, overlays, elements
# after the pixel data, a data set whose VR contradicts its transfer syntax.
IMAGES = [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
    "emri_small_big_endian.dcm", "SC_rgb_expb_32bit_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "rtdose.dcm",
    "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg.dcm",
    "examples_ybr_color.dcm", "SC_rgb_small_odd_jpeg.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LL.dcm", "MR_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm",
    "US1_J2KR.dcm", "US1_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm",
    "MR_small_RLE.dcm", "rtdose_rle.dcm", "emri_small_RLE.dcm", "liver.dcm", "liver_expb.dcm",
    "SC_ybr_full_422_uncompressed.dcm", "color-pl.dcm", "examples_palette.dcm", "examples_overlay.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
]
NO_PIXELS = ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"]
# Changed on purpose: the Image Pixel attributes of decoded frames; dropped: the retired group
# lengths (pydicom's writer drops them too) and the encapsulation-only offset tables.
CHANGED = {0x00280004, 0x00280006, 0x7FE00010, 0x7FE00001, 0x7FE00002}
WORDS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def read(data: bytes | Path) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


def encode(ds: Dataset, **kwargs) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, **kwargs)
    return out.getvalue()


def pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


# --- an in-process gateway holding the test files ---------------------------------------------

class Gateway:
    def __init__(self, folder: Path):
        from gateway.app import create_app

        self.settings = load_settings(overrides={"storage.data_dir": str(folder), "log.level": "warning",
                                                 "storage.fsync": False}, environ={})
        self.app = create_app(self.settings)
        self.services = self.app.extensions["gateway"]
        self.transcoder = self.services.transcode

    def store(self, data: bytes):
        outcome = self.services.ingest.ingest(io.BytesIO(data), principal=EMBEDDED_PRINCIPAL)
        assert outcome.ok, outcome.error
        return outcome.record

    def store_file(self, name: str, **attributes):
        """A test file under new UIDs (so that every test's copy is its own instance)."""
        ds = read(sample_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return self.store(encode(ds))

    def close(self):
        self.services.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    gateway = Gateway(tmp_path_factory.mktemp("transcode") / "data")
    yield gateway
    gateway.close()


AS_IS = {"SC_rgb_jpeg.dcm"}  # implicit VR under an explicit VR transfer syntax: stored unchanged


@pytest.fixture(scope="module")
def stored(gw):
    """name -> (record, the stored bytes), each file stored once for the module, under new
    UIDs (several test files share theirs) with its transfer syntax and pixel data unchanged."""
    result = {}
    for name in IMAGES + NO_PIXELS:
        if name in AS_IS:
            data = sample_file(name).read_bytes()
        else:
            ds = read(sample_file(name))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
                if not ds.get(keyword):
                    setattr(ds, keyword, generate_uid())
            data = encode(ds)
        result[name] = gw.store(data), data
    return result


def transcode(gw: Gateway, record, target: str) -> bytes:
    stream = gw.transcoder.stream(record, target)
    body = b"".join(stream)
    assert len(body) == stream.length
    return body


# --- what pydicom makes of the original ---------------------------------------------------------

def reference(original: bytes) -> pydicom.FileDataset:
    """pydicom's own conversion to Explicit VR Little Endian (decompressed, same UIDs)."""
    ds = read(original)
    if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.decompress(generate_instance_uid=False)
    return ds


def same_value(original, converted, big_endian: bool) -> bool:
    a, b = original.value, converted.value
    if original.VR in WORDS and big_endian and isinstance(a, bytes):
        size = WORDS[original.VR]
        return np.array_equal(np.frombuffer(a, f">u{size}"), np.frombuffer(b, f"<u{size}"))
    if original.VR == "SQ":
        return len(a) == len(b) and all(same_elements(x, y, big_endian) == [] for x, y in zip(a, b))
    return a == b


def same_elements(original: Dataset, converted: Dataset, big_endian: bool) -> list:
    """The tags whose element differs (missing, extra or another value), CHANGED left out."""
    differ = []
    for elem in original:
        if elem.tag in CHANGED or elem.tag.element == 0:
            continue
        if elem.tag not in converted or not same_value(elem, converted[elem.tag], big_endian):
            differ.append(elem.tag)
    differ += [e.tag for e in converted if e.tag not in original and e.tag not in CHANGED]
    return differ


def implicit_bytes(ds: Dataset) -> bytes:
    """``ds`` without its pixel data encoded as Implicit VR Little Endian: what an implicit VR
    reader of it has, whatever VRs it was read with."""
    copy = Dataset()
    for elem in ds:
        if elem.tag not in CHANGED:
            copy.add(elem)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, copy)
    return fp.getvalue()


@pytest.mark.parametrize("name", IMAGES)
def test_images_in_both_targets_match_pydicom(gw, stored, name):
    record, original_bytes = stored[name]
    original, ref = read(original_bytes), reference(original_bytes)
    big_endian = original.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    explicit = read(transcode(gw, record, EXPLICIT))
    implicit = read(transcode(gw, record, IMPLICIT))
    for out, target in ((explicit, EXPLICIT), (implicit, IMPLICIT)):
        assert out.file_meta.TransferSyntaxUID == target
        assert out.file_meta.MediaStorageSOPClassUID == original.file_meta.MediaStorageSOPClassUID
        assert out.file_meta.MediaStorageSOPInstanceUID == original.file_meta.MediaStorageSOPInstanceUID
        assert out.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(pixels(out), pixels(original)), f"{name} -> {target}: pixels differ"
        assert np.array_equal(pixels(out), pixels(ref))
        # Image Pixel attributes: those of pydicom's own conversion (YBR decoded to RGB...)
        assert out.PhotometricInterpretation == ref.PhotometricInterpretation
        if int(original.get("SamplesPerPixel", 1)) > 1:
            assert out.PlanarConfiguration == ref.PlanarConfiguration
        assert out.get("LossyImageCompression") == original.get("LossyImageCompression")
        assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
        assert not out["PixelData"].is_undefined_length
        assert len(out.PixelData) % 2 == 0
    # OW for more than 8 bits; 8-bit data may be OB or OW (kept as stored when copied)
    assert explicit["PixelData"].VR == "OW" if original.BitsAllocated > 8 else explicit["PixelData"].VR in ("OB", "OW")
    assert same_elements(original, explicit, big_endian) == []
    assert implicit_bytes(implicit) == implicit_bytes(explicit)


@pytest.mark.parametrize("name", NO_PIXELS)
@pytest.mark.parametrize("target", TARGETS)
def test_instances_without_pixel_data_get_their_header_re_encoded(gw, stored, name, target):
    record, original_bytes = stored[name]
    assert record.frame_index is None
    original = read(original_bytes)
    out = read(transcode(gw, record, target))
    assert out.file_meta.TransferSyntaxUID == target
    assert "PixelData" not in out
    if target == EXPLICIT:
        assert same_elements(original, out, False) == []
    else:
        assert implicit_bytes(out) == implicit_bytes(original)


def test_target_equal_to_the_stored_syntax_keeps_the_data_set(gw, stored):
    record, original_bytes = stored["CT_small.dcm"]
    body = transcode(gw, record, EXPLICIT)
    # Same syntax: the same data set bytes (CT_small has no group lengths in its data set)
    assert body[dataset_offset(io.BytesIO(body)):] == original_bytes[dataset_offset(io.BytesIO(original_bytes)):]


def test_big_endian_word_values_are_swapped(gw, stored):
    """Palette LUT data (OW) of the big endian copy equals the little endian file's."""
    record, _ = stored["OBXXXX1A_expb_2frame.dcm"]
    out = read(transcode(gw, record, EXPLICIT))
    little = read(sample_file("OBXXXX1A_2frame.dcm"))
    for keyword in ("RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
                    "BluePaletteColorLookupTableData"):
        assert out[keyword].value == little[keyword].value, keyword
    assert np.array_equal(pydicom.pixels.apply_color_lut(pixels(out), out),
                          pydicom.pixels.apply_color_lut(pixels(little), little))


def test_elements_after_the_pixel_data_are_kept(gw, stored):
    for name in ("CT_small.dcm", "MR_small_expb.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        record, original_bytes = stored[name]
        original = read(original_bytes)
        assert "DataSetTrailingPadding" in original  # (FFFC,FFFC) after (7FE0,0010)
        for target in TARGETS:
            out = read(transcode(gw, record, target))
            assert out.DataSetTrailingPadding == original.DataSetTrailingPadding, (name, target)


def _one_bit(frames: int, rows: int, columns: int, syntax) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(frames * rows)
    arr = rng.integers(0, 2, (frames, rows, columns), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SEG"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = ds.PixelRepresentation = 0
    ds.PixelData = pack_bits(arr)  # packed across frame boundaries
    ds["PixelData"].VR = "OB"
    return encode(ds, little_endian=syntax != ExplicitVRBigEndian, implicit_vr=False), arr


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("shape", [(3, 5, 5), (7, 3, 11), (2, 4, 4)])
def test_one_bit_frames_not_aligned_to_bytes(gw, syntax, shape):
    """5x5 frames are 25 bits: frame 2 starts at bit 1 of byte 3 (copied as stored from little
    endian, decoded frame by frame and packed again from big endian)."""
    data, arr = _one_bit(*shape, syntax)
    record = gw.store(data)
    for target in TARGETS:
        out = read(transcode(gw, record, target))
        assert out.PixelData[: -(-arr.size // 8)] == pack_bits(arr)[: -(-arr.size // 8)]
        assert np.array_equal(pixels(out).reshape(arr.shape), arr), (shape, syntax, target)


def test_bit_concatenator_packs_across_frames():
    bits = np.random.default_rng(5).integers(0, 2, 3 * 13, dtype=np.uint8)
    joiner = _BitConcatenator(13)
    out = b"".join(joiner.add(np.packbits(bits[i * 13:(i + 1) * 13], bitorder="little").tobytes())
                   for i in range(3)) + joiner.flush()
    assert out == np.packbits(bits, bitorder="little").tobytes()


def test_extended_offset_table_is_dropped(gw, stored):
    _record, original_bytes = stored["emri_small_jpeg_2k_lossless.dcm"]
    ds = read(original_bytes)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    record = gw.store(encode(ds))
    out = read(transcode(gw, record, EXPLICIT))
    assert "ExtendedOffsetTable" not in out and "ExtendedOffsetTableLengths" not in out
    assert np.array_equal(pixels(out), pixels(read(original_bytes)))


def test_deflated_source_is_inflated_once(gw, stored, monkeypatch):
    """The deflated data set is inflated into one spool, not once per frame; the spool is gone
    after the stream."""
    import zlib

    from gateway.services import transcode as module

    calls = []
    real = zlib.decompressobj
    monkeypatch.setattr(module.zlib, "decompressobj", lambda *a: calls.append(a) or real(*a))
    real_dcmread = pydicom.dcmread

    def header_only(*args, **kwargs):
        if not kwargs.get("stop_before_pixels"):
            pytest.fail("the data set was read whole")
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", header_only)
    record, _ = stored["image_dfl.dcm"]
    spool = gw.transcoder.spool_dir()
    before = set(spool.iterdir())
    stream = gw.transcoder.stream(record, EXPLICIT)
    body = b"".join(stream)
    monkeypatch.undo()
    assert len(calls) == 1
    assert set(spool.iterdir()) == before
    out = read(body)
    assert np.array_equal(pixels(out), pixels(read(sample_file("image_dfl.dcm"))))


# --- bounded memory -------------------------------------------------------------------------------

FRAMES, SIZE = 96, 512


@pytest.fixture(scope="module")
def cbct(gw):
    """A multi-frame JPEG 2000 lossless instance of 96 512x512 16-bit frames (48 MiB decoded),
    made of one encoded frame repeated, and that frame decoded."""
    import openjpeg

    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frame = ((np.sin(x / 30.0) * np.cos(y / 40.0) + 1) * 1500).astype(np.uint16)
    frame += np.random.default_rng(3).integers(0, 16, frame.shape, dtype=np.uint16)
    codestream = openjpeg.encode(frame, bits_stored=12, photometric_interpretation=0, use_mct=False)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "TRANSCODE-CBCT"
    ds.Rows = ds.Columns = SIZE
    ds.NumberOfFrames = FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = encapsulate([codestream] * FRAMES, has_bot=True)
    ds["PixelData"].VR = "OB"
    data = encode(ds, implicit_vr=False, little_endian=True)
    return gw.store(data), frame, len(data)


def test_stream_memory_is_about_one_frame(gw, cbct):
    record, frame, stored_size = cbct
    decoded_size = FRAMES * frame.nbytes
    assert decoded_size > 40 * 1024 * 1024 and stored_size > 5 * 1024 * 1024
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        stream = gw.transcoder.stream(record, EXPLICIT)
        length = stream.length
        chunks = iter(stream)
        head = next(chunks)
        digest.update(head)
        for chunk in chunks:
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The header chunk, then the frames: each the frame that was encoded
    assert length == len(head) + decoded_size
    assert digest.hexdigest() == hashlib.sha256(head + frame.astype("<u2").tobytes() * FRAMES).hexdigest()
    # About one stored frame and a few copies of one decoded frame (512 KiB), not 48 MiB
    assert peak < decoded_size / 10, f"peak {peak / 2**20:.1f} MiB for {decoded_size / 2**20:.0f} MiB decoded"


def test_to_file_memory_is_about_one_frame(gw, cbct, tmp_path):
    record, frame, _ = cbct
    decoded_size = FRAMES * frame.nbytes
    tracemalloc.start()
    try:
        with gw.transcoder.to_file(record, IMPLICIT, tmp_path) as path:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out = read(path)
            assert out.file_meta.TransferSyntaxUID == IMPLICIT
            assert out.NumberOfFrames == FRAMES and out.LossyImageCompression == "00"
            arr = pixels(out)
            assert arr.shape == (FRAMES, SIZE, SIZE)
            assert np.array_equal(arr[0], frame) and np.array_equal(arr[-1], frame)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    assert peak < decoded_size / 10, f"peak {peak / 2**20:.1f} MiB for {decoded_size / 2**20:.0f} MiB decoded"


# --- errors -----------------------------------------------------------------------------------------

def _encapsulated(syntax: str, rows: int = 8, columns: int = 8, samples: int = 1, frames: int = 1) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)] * frames)
    ds["PixelData"].VR = "OB"
    return encode(ds, implicit_vr=False, little_endian=True)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.100"])
def test_a_syntax_without_a_decoder_is_refused_naming_the_instance(gw, syntax):
    record = gw.store(_encapsulated(syntax))
    assert not gw.transcoder.can_produce(record, EXPLICIT)
    with pytest.raises(TranscodeError) as caught:
        gw.transcoder.stream(record, EXPLICIT)
    assert isinstance(caught.value, BadRequest) and caught.value.http_status == 400
    assert record.sop_uid in caught.value.message
    assert "no pixel data decoder" in caught.value.message


def test_a_missing_decoder_plugin_names_what_to_install(gw, stored, monkeypatch):
    from gateway.imaging import pixeldata

    class Missing:
        is_available = False
        missing_dependencies = ["openjpeg"]

    monkeypatch.setattr(pixeldata, "get_decoder", lambda uid: Missing())
    record, _ = stored["MR_small_jp2klossless.dcm"]
    with pytest.raises(TranscodeError, match="install pylibjpeg-openjpeg"):
        gw.transcoder.check(record, EXPLICIT)
    assert gw.transcoder.can_produce(stored["CT_small.dcm"][0], EXPLICIT)  # native needs no decoder


def test_undecodable_first_frame_fails_before_any_byte(gw):
    record = gw.store(_encapsulated("1.2.840.10008.1.2.4.90"))  # a truncated JPEG 2000 codestream
    assert gw.transcoder.can_produce(record, EXPLICIT)  # judged from the record: a decoder exists
    with pytest.raises(TranscodeError, match="cannot be decoded") as caught:
        gw.transcoder.stream(record, EXPLICIT)
    assert record.sop_uid in caught.value.message


def test_a_later_frame_that_fails_raises_while_streaming(gw, stored, caplog):
    _record, original_bytes = stored["emri_small_jpeg_2k_lossless.dcm"]
    ds = read(original_bytes)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    frames[4] = frames[4][:40]  # frame 5 cut short
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    record = gw.store(encode(ds))
    stream = gw.transcoder.stream(record, EXPLICIT)
    received = []
    with caplog.at_level(logging.ERROR), pytest.raises(TranscodeError, match="frame 5"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 1 + 4  # the header, then frames 1 to 4
    assert "frame 5 cannot be decoded" in caplog.text


def test_native_pixel_data_over_4_gib_is_refused_before_decoding(gw):
    record = gw.store(_encapsulated("1.2.840.10008.1.2.4.90", rows=40000, columns=40000, samples=3))
    with pytest.raises(TranscodeError, match="more than a Pixel Data element can hold"):
        gw.transcoder.stream(record, EXPLICIT)


def test_only_little_endian_native_targets(gw, stored):
    record, _ = stored["CT_small.dcm"]
    for target in ("1.2.840.10008.1.2.4.50", str(ExplicitVRBigEndian), "1.2.840.10008.1.2.1.99"):
        assert not gw.transcoder.can_produce(record, target)
        with pytest.raises(TranscodeError, match="not a syntax instances are transcoded to"):
            gw.transcoder.stream(record, target)


# --- WADO-RS in process ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(gw):
    from auth.local import LocalIssuer

    token = LocalIssuer.from_settings(gw.settings).issue(user="t", clinic="default", roles=["admin"], ttl=600)
    return gw.app.test_client(), {"Authorization": f"Bearer {token}"}


def _url(record) -> str:
    return f"/dicom-web/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_uid}"


def test_wado_single_part_default_is_explicit_le_with_its_length(gw, http):
    client, auth = http
    record = gw.store_file("emri_small_jpeg_2k_lossless.dcm")
    response = client.get(_url(record), headers={**auth, "Accept": "application/dicom"})
    assert response.status_code == 200, response.get_data()[:300]
    assert response.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    body = response.get_data()
    assert int(response.headers["Content-Length"]) == len(body)
    out = read(body)
    assert out.file_meta.TransferSyntaxUID == EXPLICIT and out.SOPInstanceUID == record.sop_uid
    assert np.array_equal(pixels(out), pixels(read(sample_file("emri_small_jpeg_2k_lossless.dcm"))))


def test_wado_multipart_series_default_and_implicit(gw, http):
    client, auth = http
    first = gw.store_file("MR_small_jp2klossless.dcm")
    ds = read(sample_file("SC_rgb_rle.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.study_uid, first.series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    second = gw.store(encode(ds))
    series = f"/dicom-web/studies/{first.study_uid}/series/{first.series_uid}"
    for accept, target in (('multipart/related; type="application/dicom"', EXPLICIT),
                           (f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT}', IMPLICIT)):
        response = client.get(series, headers={**auth, "Accept": accept})
        assert response.status_code == 200
        reader = MultipartReader(io.BytesIO(response.get_data()), parse_boundary(response.headers["Content-Type"]))
        parts = [(p.headers, p.read()) for p in reader]
        assert len(parts) == 2
        got = {}
        for headers, body in parts:
            assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
            out = read(body)
            assert out.file_meta.TransferSyntaxUID == target
            got[out.SOPInstanceUID] = out
        assert np.array_equal(pixels(got[first.sop_uid]), pixels(read(sample_file("MR_small_jp2klossless.dcm"))))
        assert got[second.sop_uid].PhotometricInterpretation == "RGB"
        assert np.array_equal(pixels(got[second.sop_uid]), pixels(ds))


def test_wado_undecodable_instance_is_400_before_the_body(gw, http):
    client, auth = http
    record = gw.store(_encapsulated("1.2.840.10008.1.2.4.92"))
    for accept, url in (("application/dicom", _url(record)),
                        ('multipart/related; type="application/dicom"', f"/dicom-web/studies/{record.study_uid}")):
        response = client.get(url, headers={**auth, "Accept": accept})
        assert response.status_code == 400, (accept, response.status_code)
        message = response.get_json()["message"]
        assert record.sop_uid in message and "decode" in message
    as_stored = client.get(_url(record), headers={
        **auth, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert as_stored.status_code == 200


# --- C-STORE of a converted instance to a pynetdicom SCP ---------------------------------------

class StoreSCP:
    """A pynetdicom Storage SCP on a loopback port accepting only ``syntaxes``."""

    def __init__(self, syntaxes):
        from pynetdicom import AE, evt

        from tests.conftest import free_port

        self.received: list[tuple[str, Dataset]] = []
        self.port = free_port()
        ae = AE(ae_title="TCSCP")
        for sop_class in ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2.1"):
            ae.add_supported_context(sop_class, syntaxes)
        self.lock = threading.Lock()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        with self.lock:
            self.received.append((str(event.context.transfer_syntax), event.dataset))
        return 0x0000

    def stop(self):
        self.server.shutdown()


def _send(gw: Gateway, scp: StoreSCP, record, *extra_syntaxes):
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    from gateway.dimse.scu import send_stored, store_contexts

    ae = AE(ae_title="TCSCU")
    ae.requested_contexts = store_contexts([record]) + [
        build_context(record.sop_class_uid, [syntax]) for syntax in extra_syntaxes]
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TCSCP")
    assert assoc.is_established
    try:
        return send_stored(assoc, gw.services.transcode, record)
    finally:
        assoc.release()


@pytest.mark.parametrize("accepted", [[ExplicitVRLittleEndian], [ImplicitVRLittleEndian]])
def test_c_store_converts_through_a_streamed_temporary_file(gw, accepted, caplog):
    record = gw.store_file("MR_small_jp2klossless.dcm")
    spool = gw.transcoder.spool_dir()
    before = set(spool.iterdir())
    scp = StoreSCP(accepted)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.dimse.scu"):
            status = _send(gw, scp, record)
    finally:
        scp.stop()
    assert status.Status == 0x0000
    ((syntax, ds),) = scp.received
    assert syntax == str(accepted[0])
    assert ds.SOPInstanceUID == record.sop_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    assert np.array_equal(pixels(ds), pixels(read(sample_file("MR_small_jp2klossless.dcm"))))
    assert "sent converted" in caplog.text
    assert set(spool.iterdir()) == before  # the temporary file is gone


def test_c_store_to_a_deflated_only_peer_falls_back_in_memory(gw, caplog):
    """pynetdicom deflates a data set in memory, not a file: the one conversion left in memory."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    record = gw.store_file("MR_small_jp2klossless.dcm")
    scp = StoreSCP([DeflatedExplicitVRLittleEndian])
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.dimse.scu"):
            status = _send(gw, scp, record, DeflatedExplicitVRLittleEndian)
    finally:
        scp.stop()
    assert status.Status == 0x0000
    ((syntax, ds),) = scp.received
    assert syntax == str(DeflatedExplicitVRLittleEndian)
    assert ds.SOPInstanceUID == record.sop_uid  # pydicom's decompress() alone would make a new one
    assert "converted in memory" in caplog.text


def test_c_store_to_a_big_endian_only_peer_is_no_accepted_context(gw):
    from gateway.dimse.scu import NoAcceptedContext

    record = gw.store_file("MR_small_jp2klossless.dcm")
    scp = StoreSCP([ExplicitVRBigEndian])
    try:
        with pytest.raises(NoAcceptedContext, match="uncompressed little endian"):
            _send(gw, scp, record, ExplicitVRBigEndian)
    finally:
        scp.stop()
    assert scp.received == []
