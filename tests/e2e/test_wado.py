"""WADO-RS beyond plain retrieval: rendered images and thumbnails, bulk data, metadata, gzip,
OHIF's Accept headers, CORS and DELETE, against the shared real server."""
from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid

from tests.data import sample_file as data_file
from tests.helpers import multipart_body, multipart_content_type, multipart_parts

pytestmark = pytest.mark.e2e

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ORIGIN = "http://viewer.example:3000"

# The shared server's authenticated session (admin of clinic "default"), set for the module.
http: requests.Session


@pytest.fixture(scope="module", autouse=True)
def _http(server):
    global http
    http = server.http


# --- test data ----------------------------------------------------------------------------

def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reidentified(name: str, study: str, series: str | None = None) -> bytes:
    """A pydicom test file moved into ``study`` with new series and SOP Instance UIDs."""
    ds = pydicom.dcmread(data_file(name))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return _encode(ds)


def cbct(study: str, n: int = 5, size: int = 64) -> list[bytes]:
    from gateway.synthetic import cbct_series, to_bytes

    return [to_bytes(ds) for ds in cbct_series(n, size=size, study_uid=study, series_uid=generate_uid(),
                                               patient_id="WADO-" + study[-6:])]


class Stored:
    def __init__(self, server, data: bytes):
        self.server = server
        self.data = data
        self.ds = pydicom.dcmread(io.BytesIO(data))
        self.study, self.series, self.sop = self.ds.StudyInstanceUID, self.ds.SeriesInstanceUID, self.ds.SOPInstanceUID

    @property
    def url(self) -> str:
        return f"{self.server.dicomweb}/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    @property
    def series_url(self) -> str:
        return f"{self.server.dicomweb}/studies/{self.study}/series/{self.series}"


def stow(server, datas: list[bytes]) -> list[Stored]:
    r = http.post(server.dicomweb + "/studies", data=multipart_body(datas, "wado-tests"), timeout=60,
                  headers={"Content-Type": multipart_content_type("wado-tests")})
    assert r.status_code == 200, r.text
    return [Stored(server, d) for d in datas]


@pytest.fixture(scope="module")
def data(server):
    study_ct, study_misc = generate_uid(), generate_uid()
    slices = stow(server, cbct(study_ct, 5))
    ct_small = stow(server, [reidentified("CT_small.dcm", study_ct)])[0]
    misc = stow(server, [reidentified(n, study_misc) for n in (
        "examples_overlay.dcm", "waveform_ecg.dcm", "emri_small.dcm", "SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm")])
    overlay, ecg, multiframe, rgb, rgb_jpeg = misc
    return {"slices": slices, "ct_small": ct_small, "overlay": overlay, "ecg": ecg, "multiframe": multiframe,
            "rgb": rgb, "rgb_jpeg": rgb_jpeg}


def parts(response: requests.Response) -> list[tuple[dict, bytes]]:
    assert response.headers["Content-Type"].startswith("multipart/related"), response.headers
    return multipart_parts(response)


def image(response: requests.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].split(";")[0] == media_type
    img = Image.open(io.BytesIO(response.content))
    img.load()
    assert img.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[media_type]
    return img


# --- rendered and thumbnails ----------------------------------------------------------------

@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
@pytest.mark.parametrize("which", ["slice", "ct_small", "rgb", "rgb_jpeg", "overlay"])
def test_rendered_instance(data, media_type, which):
    item = data["slices"][2] if which == "slice" else data[which]
    img = image(http.get(item.url + "/rendered", headers={"Accept": media_type}, timeout=30), media_type)
    assert img.size == (item.ds.Columns, item.ds.Rows)
    expected_mode = "RGB" if item.ds.SamplesPerPixel == 3 else "L"
    assert img.mode == expected_mode


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_rendered_frames_of_multiframe(data, media_type):
    item = data["multiframe"]
    first = image(http.get(item.url + "/frames/1/rendered", headers={"Accept": media_type}, timeout=30),
                  media_type)
    fifth = image(http.get(item.url + "/frames/5/rendered", headers={"Accept": media_type}, timeout=30),
                  media_type)
    assert first.size == fifth.size == (item.ds.Columns, item.ds.Rows)
    assert not np.array_equal(np.asarray(first), np.asarray(fifth))
    beyond = http.get(item.url + f"/frames/{item.ds.NumberOfFrames + 1}/rendered", timeout=30)
    assert beyond.status_code == 404, beyond.text


def test_default_accept_renders_jpeg(data):
    r = http.get(data["slices"][0].url + "/rendered", timeout=30)
    image(r, "image/jpeg")


@pytest.mark.parametrize("level", ["study", "series", "instance", "frame"])
@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_thumbnail_at_every_level(data, server, level, media_type):
    item = data["slices"][2]
    url = {"study": f"{server.dicomweb}/studies/{item.study}/thumbnail",
           "series": item.series_url + "/thumbnail", "instance": item.url + "/thumbnail",
           "frame": item.url + "/frames/1/thumbnail"}[level]
    img = image(http.get(url, headers={"Accept": media_type}, timeout=30), media_type)
    assert max(img.size) == 128  # dicomweb.thumbnail_size
    sized = image(http.get(url, params={"viewport": "40,40"}, headers={"Accept": media_type}, timeout=30),
                  media_type)
    assert sized.size == (40, 40)


def _pixels(response: requests.Response) -> np.ndarray:
    return np.asarray(image(response, "image/png")).astype(int)


def test_window_changes_the_output(data):
    item = data["slices"][2]

    def render(**params):
        return _pixels(http.get(item.url + "/rendered", params=params, headers={"Accept": "image/png"},
                                    timeout=30))

    default, bone, narrow = render(), render(window="700,3000"), render(window="40,80")
    # The header says WindowCenter 700 / WindowWidth 3000: the default is that window.
    assert np.abs(default - bone).max() <= 1
    assert not np.array_equal(bone, narrow)
    # A narrow window saturates: more pixels at 0 or 255.
    assert np.isin(narrow, (0, 255)).sum() > np.isin(bone, (0, 255)).sum()
    sigmoid = render(window="40,80,sigmoid")
    assert not np.array_equal(sigmoid, narrow)


def test_viewport_changes_the_size(data):
    item = data["slices"][0]  # 64 x 64
    for viewport, size in (("32,32", (32, 32)), ("100,50", (50, 50)), ("256,256", (256, 256))):
        r = http.get(item.url + "/rendered", params={"viewport": viewport}, headers={"Accept": "image/png"},
                         timeout=30)
        assert image(r, "image/png").size == size, viewport
    rect = data["rgb"]  # 100 x 100
    r = http.get(rect.url + "/frames/1/rendered", params={"viewport": "50,20"}, headers={"Accept": "image/jpeg"},
                     timeout=30)
    assert image(r, "image/jpeg").size == (20, 20)


def test_quality_changes_jpeg(data):
    item = data["ct_small"]
    low = http.get(item.url + "/rendered", params={"quality": "5"}, headers={"Accept": "image/jpeg"}, timeout=30)
    high = http.get(item.url + "/rendered", params={"quality": "100"}, headers={"Accept": "image/jpeg"},
                        timeout=30)
    assert len(image(low, "image/jpeg").tobytes()) == len(image(high, "image/jpeg").tobytes())
    assert len(low.content) < len(high.content)


# --- bulk data ------------------------------------------------------------------------------

def _metadata(item: Stored, **headers) -> list[dict]:
    r = http.get(item.url + "/metadata", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].split(";")[0] in ("application/dicom+json", "application/json")
    return r.json()


def _bulk(uri: str, server) -> bytes:
    assert uri.startswith(server.dicomweb + "/"), uri  # absolute, with the port requests sent in Host
    r = http.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}, timeout=30)
    assert r.status_code == 200, r.text
    (headers, body), = parts(r)
    assert headers["content-type"].startswith("application/octet-stream")
    return body


def test_overlay_bulk_data(data, server):
    item = data["overlay"]
    element = _metadata(item)[0]["60003000"]
    assert "InlineBinary" not in element and element["vr"] == "OW"
    assert _bulk(element["BulkDataURI"], server) == item.ds[0x60003000].value


def test_private_bulk_data(data, server):
    item = data["ct_small"]
    element = _metadata(item)[0]["00431029"]
    assert _bulk(element["BulkDataURI"], server) == item.ds[0x00431029].value


def test_bulk_data_inside_a_sequence(data, server):
    item = data["ecg"]
    groups = _metadata(item)[0]["54000100"]["Value"]
    assert len(groups) == len(item.ds.WaveformSequence)
    for metadata_item, ds_item in zip(groups, item.ds.WaveformSequence):
        uri = metadata_item["54001010"]["BulkDataURI"]
        assert "/bulk/54000100/" in uri
        assert _bulk(uri, server) == ds_item.WaveformData


def test_pixel_bulk_data_uri_gives_every_frame(data, server):
    item = data["multiframe"]
    uri = _metadata(item)[0]["7FE00010"]["BulkDataURI"]
    r = http.get(uri, headers={"Accept": OCTET_ANY}, timeout=30)
    assert r.status_code == 200, r.text
    frames = parts(r)
    assert len(frames) == item.ds.NumberOfFrames
    size = item.ds.Rows * item.ds.Columns * 2
    assert b"".join(body for _, body in frames) == item.ds.PixelData[: size * item.ds.NumberOfFrames]


# --- metadata -------------------------------------------------------------------------------

KEY_TAGS = {
    "00280030": "PixelSpacing", "00280010": "Rows", "00280011": "Columns", "00281053": "RescaleSlope",
    "00281052": "RescaleIntercept", "00281050": "WindowCenter", "00281051": "WindowWidth",
    "00200032": "ImagePositionPatient", "00200037": "ImageOrientationPatient", "00280100": "BitsAllocated",
    "00280101": "BitsStored", "00280103": "PixelRepresentation", "00280004": "PhotometricInterpretation",
    "00080060": "Modality", "00200013": "InstanceNumber", "00080018": "SOPInstanceUID", "00200052": "FrameOfReferenceUID",
}


@pytest.mark.parametrize("which", ["slice", "ct_small"])
def test_instance_metadata_matches_the_stored_header(data, which):
    item = data["slices"][3] if which == "slice" else data["ct_small"]
    got = _metadata(item)
    assert len(got) == 1
    expected = item.ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "bulk")
    for tag, keyword in KEY_TAGS.items():
        if keyword not in item.ds:
            continue
        assert got[0][tag]["vr"] == expected[tag]["vr"], keyword
        values, want = got[0][tag].get("Value"), expected[tag].get("Value")
        if item.ds[keyword].VR in ("DS", "IS"):
            assert np.allclose([float(v) for v in values], [float(v) for v in want]), keyword
        else:
            assert values == want, keyword
    assert got[0]["7FE00010"]["BulkDataURI"].endswith(f"/instances/{item.sop}/bulk/7FE00010")


def test_series_and_study_metadata(data, server):
    slices = data["slices"]
    series = http.get(slices[0].series_url + "/metadata", timeout=30).json()
    assert [m["00080018"]["Value"][0] for m in series] == [s.sop for s in slices]  # instance-number order
    positions = [m["00200032"]["Value"] for m in series]
    assert positions == [[float(v) for v in s.ds.ImagePositionPatient] for s in slices]
    study = http.get(f"{server.dicomweb}/studies/{slices[0].study}/metadata", timeout=30).json()
    assert {m["00080018"]["Value"][0] for m in study} == {s.sop for s in slices} | {data["ct_small"].sop}


def test_metadata_gzip(data):
    item = data["slices"][0]
    plain = http.get(item.series_url + "/metadata", headers={"Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    r = http.get(item.series_url + "/metadata", headers={"Accept-Encoding": "gzip, deflate"}, timeout=30,
                     stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in r.headers.get("Vary", "")
    raw = r.raw.read(decode_content=False)
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw)) == plain.json()


# --- OHIF's Accept headers ------------------------------------------------------------------

def test_ohif_frame_accept_unquoted(data):
    item = data["slices"][1]
    r = http.get(item.url + "/frames/1", timeout=30,
                     headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    assert r.status_code == 200, r.text
    (headers, body), = parts(r)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    assert body == item.ds.PixelData


@pytest.mark.parametrize("which", ["slice", "rgb_jpeg"])
def test_ohif_duplicated_transfer_syntax(data, which):
    item = data["slices"][1] if which == "slice" else data["rgb_jpeg"]
    accept = ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1; '
              "transfer-syntax=*")
    r = http.get(item.url + "/frames/1", headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200, r.text
    (headers, body), = parts(r)
    ts = headers["content-type"].split("transfer-syntax=")[1].strip()
    if ts == "1.2.840.10008.1.2.1":
        expected = item.ds.pixel_array.astype(item.ds.pixel_array.dtype.newbyteorder("<")).tobytes()
        assert len(body) == item.ds.Rows * item.ds.Columns * item.ds.SamplesPerPixel * item.ds.BitsAllocated // 8
        if which == "slice":
            assert body == expected
    else:
        assert ts == item.ds.file_meta.TransferSyntaxUID
        assert body == next(pydicom.encaps.generate_frames(item.ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("accept", [
    "multipart/related; type=application/dicom; transfer-syntax=*",
    'multipart/related; type="application/dicom"',
    "multipart/related; type=application/dicom",
    "multipart/*",
    "*/*",
    'multipart/related; type="application/octet-stream", multipart/related; type="application/dicom"; transfer-syntax=*',
])
def test_series_retrieve_accept_variants(data, accept):
    slices = data["slices"]
    r = http.get(slices[0].series_url, headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200, r.text
    got = parts(r)
    assert len(got) == len(slices)
    sops = [pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID for _, body in got]
    assert sops == [s.sop for s in slices]


@pytest.mark.parametrize("accept", ["application/dicom+json", "application/json", "*/*",
                                    "application/dicom+json, application/json;q=0.9", "application/*"])
def test_metadata_accept_variants(data, accept):
    assert len(_metadata(data["slices"][0], Accept=accept)) == 1


# --- CORS -----------------------------------------------------------------------------------

def _assert_cors(r: requests.Response):
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), r.headers
    assert "Warning" in r.headers.get("Access-Control-Expose-Headers", "")


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/studies/1.2.3.4.5.6.7.8/metadata", 404),
    ("GET", "/studies?NoSuchKeyword=1", 400),
    ("GET", "/studies/1.2.3/series/4/instances/5/frames/0", 400),
    ("POST", "/studies", 415),
])
def test_cors_headers_on_errors(server, method, path, status):
    r = http.request(method, server.dicomweb + path, headers={"Origin": ORIGIN, "Content-Type": "text/plain"},
                         data=b"x" if method == "POST" else None, timeout=30)
    assert r.status_code == status, r.text
    _assert_cors(r)


def test_cors_on_success(data):
    r = http.get(data["slices"][0].url + "/metadata", headers={"Origin": ORIGIN}, timeout=30)
    assert r.status_code == 200
    _assert_cors(r)


@pytest.mark.parametrize("path", ["/studies", "/studies/1.2.3/series/4/instances/5/frames/1"])
def test_cors_preflight(server, path):
    r = http.options(server.dicomweb + path, timeout=30, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept, authorization, content-type"})
    assert r.status_code in (200, 204), r.text
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN)
    allowed = {h.strip().lower() for h in r.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"accept", "authorization", "content-type"} <= allowed
    methods = {m.strip().upper() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"} <= methods


# --- DELETE ---------------------------------------------------------------------------------

def _blob_files(server, uid: str) -> list:
    return [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and uid in str(p)]


def test_delete_instance_series_study(server):
    study = generate_uid()
    first = stow(server, cbct(study, 3, size=16))
    second = stow(server, cbct(study, 2, size=16))
    assert len(_blob_files(server, study)) == 5

    victim = first[0]
    r = http.delete(victim.url, timeout=30)
    assert r.status_code == 204, r.text
    assert http.get(victim.url, headers={"Accept": DICOM_ANY}, timeout=30).status_code == 404
    assert http.get(victim.url + "/metadata", timeout=30).status_code == 404
    assert http.get(victim.url + "/frames/1", timeout=30).status_code == 404
    assert not _blob_files(server, victim.sop)
    assert len(_blob_files(server, study)) == 4
    assert http.delete(victim.url, timeout=30).status_code == 404
    remaining = http.get(first[1].series_url + "/metadata", timeout=30).json()
    assert {m["00080018"]["Value"][0] for m in remaining} == {first[1].sop, first[2].sop}
    count = http.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study}, timeout=30).json()
    assert count[0]["00201208"]["Value"] == [4]

    r = http.delete(first[1].series_url, timeout=30)
    assert r.status_code == 204, r.text
    assert http.get(first[1].series_url, headers={"Accept": DICOM_ANY}, timeout=30).status_code == 404
    assert http.get(first[1].series_url + "/metadata", timeout=30).status_code == 404
    assert not _blob_files(server, first[1].series)
    series_left = http.get(f"{server.dicomweb}/studies/{study}/series", timeout=30).json()
    assert [s["0020000E"]["Value"][0] for s in series_left] == [second[0].series]
    assert http.get(second[0].url, headers={"Accept": DICOM_ANY}, timeout=30).status_code == 200

    r = http.delete(f"{server.dicomweb}/studies/{study}", timeout=30)
    assert r.status_code == 204, r.text
    for url in (f"{server.dicomweb}/studies/{study}", f"{server.dicomweb}/studies/{study}/metadata",
                second[0].url + "/rendered", f"{server.dicomweb}/studies/{study}/thumbnail"):
        assert http.get(url, timeout=30).status_code == 404, url
    assert http.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study}, timeout=30).json() == []
    assert not _blob_files(server, study)
    assert http.delete(f"{server.dicomweb}/studies/{study}", timeout=30).status_code == 404
