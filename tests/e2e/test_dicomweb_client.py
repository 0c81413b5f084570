"""Every image instance pydicom and pydicom-data ship, through a real server, with dicomweb-client.

Which files are used is decided by reading them (:func:`inspect`), not by a hand list:
a file is a valid image instance when pydicom reads it as Part 10 with file meta and a
transfer syntax, it is not a DICOMDIR, its SOP/series/study UIDs are valid UIDs, its file
meta agrees with its dataset, and it has complete pixel data.  The rest (no meta, broken,
truncated) belongs to ``test_bad_input.py``.

Many of these files share a SOP Instance UID (``MR_small*.dcm`` are one instance in
nine encodings), which a PACS rightly refuses to hold twice.  :class:`Catalog` therefore
stores a conflict-free batch in one request first, then swaps in (DELETE + STOW) the
encoding a test needs when another one of the same instance is stored.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

from tests.data import all_files, pydicom_files
from tests.helpers import multipart_parts

pytestmark = pytest.mark.e2e

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# --- which files are valid image instances ------------------------------------------------

@dataclass(frozen=True)
class Instance:
    path: Path
    study: str
    series: str
    sop: str
    transfer_syntax: str
    frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    photometric: str
    planar: int
    encapsulated: bool
    sha256: str
    has_pixels: bool = True
    bits_stored: int = 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def native_frame_bytes(self) -> int:
        """Rows * Columns * SamplesPerPixel * BitsAllocated / 8 (uncompressed size of a frame)."""
        return (self.rows * self.columns * self.samples * self.bits_allocated + 7) // 8

    @property
    def stored_frame_bytes(self) -> int:
        """Size of a native frame as stored: YBR_FULL_422 keeps 2 samples per pixel."""
        if self.photometric == "YBR_FULL_422":
            return (self.rows * self.columns * 2 * self.bits_allocated + 7) // 8
        return self.native_frame_bytes


def _valid_uid(value) -> bool:
    text = str(value or "").strip()
    return bool(text) and len(text) <= 64 and bool(_UID_RE.match(text))


def inspect(path: Path, *, image: bool = True) -> Instance | str:
    """The instance in ``path``, or why it is not a valid (image, unless not ``image``) instance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            return "not Part 10 (no preamble/DICM or no file meta)"
        except Exception as exc:  # noqa: BLE001 - any parse failure means broken
            return f"pydicom cannot read it: {exc}"
        meta = ds.file_meta
        if "TransferSyntaxUID" not in meta:
            return "file meta has no TransferSyntaxUID"
        if str(ds.get("SOPClassUID", "")) == DICOMDIR_CLASS:
            return "DICOMDIR"
        uids = {k: ds.get(k) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")}
        bad = [k for k, v in uids.items() if not _valid_uid(v)]
        if bad:
            return f"invalid or missing {', '.join(bad)}"
        for meta_kw, kw in (("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
                            ("MediaStorageSOPClassUID", "SOPClassUID")):
            if meta.get(meta_kw) and str(meta.get(meta_kw)).strip() != str(ds.get(kw, "")).strip():
                return f"{meta_kw} differs from {kw}"
        if "PixelData" not in ds:
            if image:
                return "no pixel data (not an image)"
            return Instance(path, str(uids["StudyInstanceUID"]), str(uids["SeriesInstanceUID"]),
                            str(uids["SOPInstanceUID"]), str(meta.TransferSyntaxUID), 0, 0, 0, 0, 0, "", 0,
                            False, hashlib.sha256(path.read_bytes()).hexdigest(), has_pixels=False)
        try:
            frames = int(ds.get("NumberOfFrames") or 1)
            rows, columns = int(ds.Rows), int(ds.Columns)
            samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        except (AttributeError, TypeError, ValueError) as exc:
            return f"unusable image pixel module: {exc}"
        ts = meta.TransferSyntaxUID
        encapsulated = ts.is_encapsulated
        if encapsulated:
            try:
                found = len(list(generate_frames(ds.PixelData, number_of_frames=frames)))
            except Exception as exc:  # noqa: BLE001
                return f"encapsulated pixel data is malformed: {exc}"
            if found != frames:
                return f"{found} encapsulated frames, NumberOfFrames {frames}"
        elif not ts.is_deflated:
            per_pixel = 2 if str(ds.get("PhotometricInterpretation")) == "YBR_FULL_422" else samples
            needed = (rows * columns * per_pixel * bits * frames + 7) // 8
            if len(ds.PixelData) < needed:
                return f"pixel data truncated ({len(ds.PixelData)} of {needed} bytes)"
    return Instance(path, str(uids["StudyInstanceUID"]), str(uids["SeriesInstanceUID"]),
                    str(uids["SOPInstanceUID"]), str(ts), frames, rows, columns, samples, bits,
                    str(ds.get("PhotometricInterpretation", "")), int(ds.get("PlanarConfiguration") or 0),
                    encapsulated, hashlib.sha256(path.read_bytes()).hexdigest(),
                    bits_stored=int(ds.get("BitsStored") or bits))


INSPECTED = {path: inspect(path) for path in all_files()}
IMAGES = [i for i in INSPECTED.values() if isinstance(i, Instance)]
MULTIFRAME = [i for i in IMAGES if i.frames >= 3]
CHARSET_FOLDER = Path(pydicom.__file__).parent / "data" / "charset_files"


def _param(instance: Instance):
    return pytest.param(instance, id=instance.name)


# --- expected values, computed locally with pydicom ---------------------------------------

def stored_frame(instance: Instance, number: int) -> bytes:
    """Frame ``number`` as it is in the file: a codestream, or native bytes in stored order."""
    ds = pydicom.dcmread(instance.path)
    if instance.encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=instance.frames))[number - 1]
    size = instance.stored_frame_bytes
    start, end = (number - 1) * size, number * size
    if instance.transfer_syntax == "1.2.840.10008.1.2.2" and instance.bits_allocated == 8 \
            and ds["PixelData"].VR == "OW":
        start, end = start - start % 2, end + end % 2  # 8-bit data in swapped 16-bit words
    return bytes(ds.PixelData[start:end])


def decoded_frame(instance: Instance, number: int) -> bytes | None:
    """What the uncompressed (Explicit VR Little Endian) frame must be, or None when
    pydicom cannot decode it here."""
    # Native data is sent as stored (no colour conversion); compressed data is decoded the
    # way pydicom does by default (YBR -> RGB).
    raw = not instance.encapsulated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            arr = pydicom.pixels.pixel_array(str(instance.path), index=number - 1, raw=raw)
        except Exception:  # noqa: BLE001 - reading from a path fails on deflated or odd files
            try:
                arr = pydicom.pixels.pixel_array(pydicom.dcmread(instance.path), index=number - 1, raw=raw)
            except Exception:  # noqa: BLE001 - a codec this environment lacks
                return None
    if instance.bits_allocated == 1:
        return np.packbits(arr.ravel(), bitorder="little").tobytes()
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    if not instance.encapsulated and instance.samples > 1 and instance.planar == 1:
        arr = np.moveaxis(arr, -1, 0)  # native colour-by-plane keeps its layout
    return np.ascontiguousarray(arr).tobytes()


def same_pixels(instance: Instance, data: bytes, expected: bytes) -> bool:
    """Whether a decoded frame from the server holds the expected pixel values."""
    if data == expected:
        return True
    bits = instance.bits_allocated
    if instance.encapsulated or bits not in (16, 32) or instance.bits_stored >= bits:
        return False
    # Native frames are sent as stored; the bits above BitsStored are not pixel data
    # (pydicom sign-extends them, mlut_18.dcm keeps them 0).
    dtype, mask = f"<u{bits // 8}", (1 << instance.bits_stored) - 1
    a, b = np.frombuffer(data, dtype), np.frombuffer(expected, dtype)
    return a.shape == b.shape and bool(np.array_equal(a & mask, b & mask))


# --- the server side ----------------------------------------------------------------------

class Catalog:
    """Which encoding of each SOP Instance UID is on the server; swaps them on demand."""

    def __init__(self, server):
        self.server = server
        self.client = DICOMwebClient(url=server.dicomweb, headers=server.auth_headers)
        self.current: dict[str, str] = {}  # sop -> sha256 stored by this module

    def _post(self, paths: list[Path]):
        # store_instances() re-encodes datasets with dcmwrite, which does not reproduce
        # every file byte for byte (and fails on SC_rgb_jpeg.dcm): post the files' own
        # bytes through the client's multipart STOW instead.
        return self.client._http_post_multipart_application_dicom(
            self.client._get_studies_url(_Transaction.STORE), [p.read_bytes() for p in paths])

    def store_batch(self, instances: list[Instance]) -> None:
        batch, sops, series_study = [], set(), {}
        for inst in instances:
            if inst.sop in sops or series_study.get(inst.series, inst.study) != inst.study:
                continue
            sops.add(inst.sop)
            series_study[inst.series] = inst.study
            batch.append(inst)
        result = self._post([i.path for i in batch])
        stored = {item.ReferencedSOPInstanceUID for item in result.get("ReferencedSOPSequence", [])}
        failed = [(i.FailureReason, i.get((0x0000, 0x0902))) for i in result.get("FailedSOPSequence", [])]
        assert not failed, failed
        assert stored == {i.sop for i in batch}
        for inst in batch:
            self.current[inst.sop] = inst.sha256

    def _drop(self, url: str) -> None:
        response = self.server.http.delete(url, timeout=60)
        assert response.status_code in (204, 404), response.text

    def ensure(self, inst: Instance) -> Instance:
        if self.current.get(inst.sop) == inst.sha256:
            return inst
        for _attempt in range(3):
            try:
                self._post([inst.path])
                self.current[inst.sop] = inst.sha256
                return inst
            except requests.HTTPError as exc:
                if exc.response is None or exc.response.status_code != 409:
                    raise
                body = exc.response.json()
                reason = body["00081198"]["Value"][0]["00081197"]["Value"][0]
            base = self.server.dicomweb
            if reason == 0x0111:  # another encoding of this instance is stored: swap it out
                found = self.server.http.get(f"{base}/instances", params={"SOPInstanceUID": inst.sop}, timeout=30).json()
                for row in found:
                    self._drop(f"{base}/studies/{row['0020000D']['Value'][0]}/series/"
                               f"{row['0020000E']['Value'][0]}/instances/{inst.sop}")
                self.current.pop(inst.sop, None)
            else:  # the series is stored under another study by another file
                found = self.server.http.get(f"{base}/series", params={"SeriesInstanceUID": inst.series}, timeout=30).json()
                for row in found:
                    study = row["0020000D"]["Value"][0]
                    members = self.server.http.get(f"{base}/studies/{study}/series/{inst.series}/instances", timeout=30)
                    for m in members.json() if members.status_code == 200 else []:
                        self.current.pop(m["00080018"]["Value"][0], None)
                    self._drop(f"{base}/studies/{study}/series/{inst.series}")
        raise AssertionError(f"could not store {inst.name}")


@pytest.fixture(scope="module")
def catalog(server) -> Catalog:
    cat = Catalog(server)
    cat.store_batch(IMAGES)
    return cat


@pytest.fixture
def stored(request, catalog) -> Instance:
    return catalog.ensure(request.param)


def _url(server, inst: Instance) -> str:
    return f"{server.dicomweb}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"


# --- the tests ------------------------------------------------------------------------------

def test_files_are_classified_by_reading_them():
    reasons = {p.name: r for p, r in INSPECTED.items() if isinstance(r, str)}
    assert len(IMAGES) > 100, reasons
    # A few the suite relies on, both ways.
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "ExplVR_BigEnd.dcm",
            "chrH31.dcm"} <= {i.name for i in IMAGES}
    assert {"MR_truncated.dcm", "no_meta.dcm", "ExplVR_LitEndNoMeta.dcm"} <= set(reasons)
    # Every family of encodings is exercised: native LE/BE, deflated, RLE, JPEG baseline and
    # lossless, JPEG-LS, JPEG 2000, multi-frame.
    syntaxes = {i.transfer_syntax for i in IMAGES}
    for family in (["1.2.840.10008.1.2"], ["1.2.840.10008.1.2.1"], ["1.2.840.10008.1.2.2"],
                   ["1.2.840.10008.1.2.1.99"], ["1.2.840.10008.1.2.5"], ["1.2.840.10008.1.2.4.50"],
                   ["1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"],
                   ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"],
                   ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"]):
        assert syntaxes & set(family), family
    assert len(MULTIFRAME) >= 5


@pytest.mark.parametrize("stored", [_param(i) for i in IMAGES], indirect=True)
def test_qido_finds_instance_at_every_level(stored, catalog):
    client = catalog.client
    studies = client.search_for_studies(search_filters={"StudyInstanceUID": stored.study})
    assert [s["0020000D"]["Value"][0] for s in studies] == [stored.study]
    series = client.search_for_series(stored.study)
    assert stored.series in {s["0020000E"]["Value"][0] for s in series}
    instances = client.search_for_instances(stored.study, stored.series)
    assert stored.sop in {i["00080018"]["Value"][0] for i in instances}
    anywhere = client.search_for_instances(search_filters={"SOPInstanceUID": stored.sop})
    assert [i["00080018"]["Value"][0] for i in anywhere] == [stored.sop]


@pytest.mark.parametrize("stored", [_param(i) for i in IMAGES], indirect=True)
def test_retrieve_instance_as_stored_is_byte_identical(stored, catalog, server):
    ds = catalog.client.retrieve_instance(stored.study, stored.series, stored.sop,
                                          media_types=(("application/dicom", "*"),))
    assert ds.SOPInstanceUID == stored.sop
    response = server.http.get(_url(server, stored), headers={"Accept": DICOM_ANY}, timeout=60)
    assert response.status_code == 200, response.text
    parts = multipart_parts(response)
    assert len(parts) == 1
    headers, body = parts[0]
    assert headers["content-type"].startswith("application/dicom")
    assert hashlib.sha256(body).hexdigest() == stored.sha256
    assert body == stored.path.read_bytes()


@pytest.mark.parametrize("stored", [_param(i) for i in IMAGES], indirect=True)
def test_series_metadata_has_pixel_bulk_data_uri(stored, catalog):
    metadata = catalog.client.retrieve_series_metadata(stored.study, stored.series)
    mine = [m for m in metadata if m["00080018"]["Value"][0] == stored.sop]
    assert len(mine) == 1
    pixel = mine[0]["7FE00010"]
    assert "BulkDataURI" in pixel and "InlineBinary" not in pixel
    uri = pixel["BulkDataURI"]
    # dicomweb-client sends "Host: 127.0.0.1" without the port (dicomweb_client/web.py
    # _http_get), so absolute URIs the server builds from Host lack the port here; compare
    # paths (test_wado.py checks the whole URI with a correct Host header).
    path = urlsplit(uri).path
    assert path == (f"{urlsplit(catalog.server.dicomweb).path}/studies/{stored.study}/series/{stored.series}"
                    f"/instances/{stored.sop}/bulk/7FE00010")
    uri = catalog.server.url + path
    assert mine[0]["00280010"]["Value"][0] == stored.rows
    assert mine[0]["00280011"]["Value"][0] == stored.columns
    response = catalog.server.http.get(uri, headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}, timeout=60)
    assert response.status_code == 200, response.text
    assert len(multipart_parts(response)) == stored.frames


@pytest.mark.parametrize("stored", [_param(i) for i in IMAGES], indirect=True)
def test_frame_as_stored(stored, catalog):
    frames = catalog.client.retrieve_instance_frames(
        stored.study, stored.series, stored.sop, frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),))
    assert len(frames) == 1
    expected = stored_frame(stored, 1)
    if stored.transfer_syntax == "1.2.840.10008.1.2.1.99":
        # deflated frames have no stored form: they come inflated
        assert same_pixels(stored, frames[0], decoded_frame(stored, 1)), "inflated frame differs"
    else:
        assert frames[0] == expected, f"frame 1 differs from the stored one ({len(frames[0])} vs {len(expected)} bytes)"


@pytest.mark.parametrize("stored", [_param(i) for i in IMAGES], indirect=True)
def test_frame_decoded(stored, catalog, server):
    expected = decoded_frame(stored, 1)
    if expected is None:
        # pydicom cannot decode it here: the server (same codecs) must say so, not crash.
        response = server.http.get(f"{_url(server, stored)}/frames/1", headers={
            "Accept": 'multipart/related; type="application/octet-stream"'}, timeout=60)
        assert 400 <= response.status_code < 500, response.text
        assert "decode" in response.json()["message"]
        return
    frames = catalog.client.retrieve_instance_frames(stored.study, stored.series, stored.sop,
                                                     frame_numbers=[1])
    assert len(frames) == 1
    if stored.photometric == "YBR_FULL_422" and not stored.encapsulated:
        # Native YBR_FULL_422 stays subsampled in Explicit VR Little Endian (PS3.3 C.7.6.3.1.2).
        assert len(frames[0]) == stored.rows * stored.columns * 2 * stored.bits_allocated // 8
        assert frames[0] == stored_frame(stored, 1), "native YBR_FULL_422 frame differs from the stored one"
        return
    assert len(frames[0]) == stored.native_frame_bytes
    assert same_pixels(stored, frames[0], expected), "decoded frame 1 differs from pydicom's pixel_array"


@pytest.mark.parametrize("stored", [_param(i) for i in MULTIFRAME], indirect=True)
def test_multiframe_frame_list_and_out_of_range(stored, catalog, server):
    client = catalog.client
    as_stored = client.retrieve_instance_frames(stored.study, stored.series, stored.sop, frame_numbers=[1, 3],
                                                media_types=(("application/octet-stream", "*"),))
    assert as_stored == [stored_frame(stored, 1), stored_frame(stored, 3)], "stored frames 1,3 differ"
    first, third = decoded_frame(stored, 1), decoded_frame(stored, 3)
    if first is not None and not (stored.photometric == "YBR_FULL_422" and not stored.encapsulated):
        decoded = client.retrieve_instance_frames(stored.study, stored.series, stored.sop, frame_numbers=[1, 3])
        assert len(decoded) == 2
        assert same_pixels(stored, decoded[0], first), "decoded frame 1 differs from pixel_array"
        assert same_pixels(stored, decoded[1], third), "decoded frame 3 differs from pixel_array"
    beyond = server.http.get(f"{_url(server, stored)}/frames/1,{stored.frames + 1}", headers={
        "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}, timeout=30)
    assert beyond.status_code == 404, beyond.text
    assert str(stored.frames + 1) in beyond.json()["message"]


# --- character sets -------------------------------------------------------------------------

def _charset_cases():
    """(file, the non-ASCII name groups to search by) for every charset file that is a storable
    instance: ideographic (kanji, hanja), phonetic (hiragana, hangul) and non-ASCII alphabetic."""
    cases = []
    for path in sorted(CHARSET_FOLDER.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        if not isinstance(inspect(path, image=False), Instance):
            continue  # no UIDs (chrSQEncoding*) or meta mismatch (chrJapMulti*)
        name = ds.get("PatientName")
        if not name:
            continue
        groups = [g for g in (name.alphabetic, name.ideographic, name.phonetic) if g and not g.isascii()]
        if groups:
            cases.append(pytest.param(path, groups, id=path.name))
    return cases


@pytest.fixture(scope="module")
def charset_client(server):
    return DICOMwebClient(url=server.dicomweb, headers=server.auth_headers)


@pytest.mark.parametrize("path,groups", _charset_cases())
def test_charset_patient_name_is_searchable_and_round_trips(path, groups, charset_client, catalog):
    inst = inspect(path, image=False)  # chrKoreanMulti.dcm has no pixel data: stored all the same
    assert isinstance(inst, Instance), inst
    catalog.ensure(inst)
    ds = pydicom.dcmread(path)
    for group in groups:
        found = charset_client.search_for_studies(search_filters={"PatientName": group})
        assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in found}, group
        wildcard = charset_client.search_for_studies(search_filters={"PatientName": group[:1] + "*"})
        assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in wildcard}, group
    group = groups[-1]
    found = charset_client.search_for_studies(search_filters={"PatientName": group})
    study = next(s for s in found if s["0020000D"]["Value"][0] == ds.StudyInstanceUID)
    pn = study["00100010"]["Value"][0]
    name = ds.PatientName
    assert pn["Alphabetic"] == name.alphabetic
    if name.ideographic:
        assert pn["Ideographic"] == name.ideographic
    if name.phonetic:
        assert pn["Phonetic"] == name.phonetic
    instances = charset_client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                    search_filters={"PatientName": group})
    assert ds.SOPInstanceUID in {i["00080018"]["Value"][0] for i in instances}
    back = charset_client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                            media_types=(("application/dicom", "*"),))
    assert back.PatientName == name
    metadata = charset_client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                         ds.SOPInstanceUID)
    assert metadata["00100010"]["Value"][0]["Alphabetic"] == name.alphabetic


def test_store_instances_public_api_round_trip(server):
    """``store_instances`` (datasets re-encoded by the client) on two re-identified files."""
    client = DICOMwebClient(url=server.dicomweb, headers=server.auth_headers)
    study = pydicom.uid.generate_uid()
    datasets = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(next(p for p in pydicom_files() if p.name == name))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        datasets.append(ds)
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in result
    for ds in datasets:
        back = client.retrieve_instance(study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_public_url_gives_dicomweb_client_usable_uris(fresh_server):
    """dicomweb-client sends ``Host`` without the port; ``server.public_url`` makes the
    RetrieveURL and BulkDataURI values absolute and right all the same."""
    fresh_server.env["GATEWAY_SERVER__PUBLIC_URL"] = fresh_server.url
    server = fresh_server.start()
    client = DICOMwebClient(url=server.dicomweb, headers=server.auth_headers)
    path = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    result = client._http_post_multipart_application_dicom(client._get_studies_url(_Transaction.STORE),
                                                            [path.read_bytes()])
    assert result.ReferencedSOPSequence[0].RetrieveURL.startswith(server.dicomweb + "/studies/")
    metadata = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(server.dicomweb + "/studies/")
    frames = client.retrieve_bulkdata(uri)
    assert frames == [ds.PixelData]
