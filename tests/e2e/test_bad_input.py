"""Bad input against a server of its own: every answer is a 4xx naming the problem, and nothing
stored changes (neither the instances QIDO lists nor the files of the blob folder)."""
from __future__ import annotations

import io
import socket
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import ServerProcess
from tests.data import sample_file as data_file
from tests.e2e.test_dicomweb_client import INSPECTED
from tests.helpers import multipart_body

pytestmark = pytest.mark.e2e

MULTIPART = 'multipart/related; type="application/dicom"; boundary=bad-input'
FAILED_SEQ, ERROR_COMMENT = "00081198", "00000902"


@pytest.fixture(scope="module")
def bad_server(tmp_path_factory):
    """Like ``fresh_server``, once for the module: every test checks it is left unchanged."""
    srv = ServerProcess(tmp_path_factory.mktemp("bad-input") / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def seeded(bad_server):
    """A few good instances, stored before any bad request."""
    files = [data_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "emri_small_RLE.dcm")]
    for path in files:
        r = bad_server.http.post(bad_server.dicomweb + "/studies", data=path.read_bytes(),
                          headers={"Content-Type": "application/dicom"}, timeout=60)
        assert r.status_code == 200, r.text
    return {path.name: pydicom.dcmread(path, stop_before_pixels=True) for path in files}


def snapshot(server) -> tuple[frozenset, frozenset]:
    r = server.http.get(server.dicomweb + "/instances", params={"limit": 10000}, timeout=30)
    assert r.status_code == 200, r.text
    sops = frozenset(row["00080018"]["Value"][0] for row in r.json())
    blobs = server.data_dir / "blobs"
    files = frozenset((str(p.relative_to(blobs)), p.stat().st_size) for p in blobs.rglob("*") if p.is_file())
    return sops, files


@pytest.fixture
def unchanged(bad_server, seeded):
    """Yields the server; afterwards checks the stored instances and blob files did not change."""
    before = snapshot(bad_server)
    assert len(before[0]) == len(seeded)
    yield bad_server
    assert snapshot(bad_server) == before


def problem(response: requests.Response) -> str:
    """The text naming the problem: the error message, or the STOW failure comments."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    body = response.json()
    if FAILED_SEQ in body:
        comments = [item[ERROR_COMMENT]["Value"][0] for item in body[FAILED_SEQ]["Value"]]
        assert "00081199" not in body, "nothing may be stored"
        return " | ".join(comments)
    assert body["code"] == response.status_code
    return body["message"]


def post(server, body, content_type: str = "application/dicom", path: str = "/studies"):
    return server.http.post(server.dicomweb + path, data=body, headers={"Content-Type": content_type}, timeout=60)


def multipart(*parts: bytes, boundary: str = "bad-input", part_type: str = "application/dicom") -> bytes:
    return multipart_body(parts, boundary, part_type)


def reencoded(name: str, **changes) -> bytes:
    """A pydicom file with new UIDs (so it never collides) and ``changes`` (None deletes)."""
    ds = pydicom.dcmread(data_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


CT = data_file("CT_small.dcm").read_bytes()


def _cut_in_header() -> bytes:
    """CT_small.dcm cut in the middle of its SeriesInstanceUID value (before the pixel data)."""
    uid = pydicom.dcmread(io.BytesIO(CT)).SeriesInstanceUID.encode()
    at = CT.find(uid, 200)
    assert at > 0
    return CT[: at + len(uid) // 2 + 1]


# --- STOW bodies that must be rejected ----------------------------------------------------

STOW_CASES = {
    # name: (body, content type, words the answer must contain (any of))
    "truncated-in-header": (_cut_in_header(), "application/dicom", ("truncated",)),
    "truncated-in-pixel-data-MR_truncated": (data_file("MR_truncated.dcm").read_bytes(), "application/dicom",
                                             ("truncated",)),
    "CT-cut-by-1000-bytes": (CT[:-1000], "application/dicom", ("truncated",)),
    "CT-cut-by-1000-bytes-in-multipart": (multipart(CT[:-1000]), MULTIPART, ("truncated",)),
    "RLE-cut-in-a-fragment": (data_file("emri_small_RLE.dcm").read_bytes()[:-700], "application/dicom",
                              ("truncated",)),
    "cut-after-preamble": (CT[:141], "application/dicom", ("DICOM", "parsed", "meta")),
    "not-dicom": (b"%PDF-1.4 this is not DICOM\n" * 40, "application/dicom", ("not a DICOM",)),
    "preamble-and-garbage": (b"\0" * 128 + b"DICM" + b"\xff" * 300, "application/dicom",
                             ("meta", "DICOM", "parsed")),
    "missing-SOPInstanceUID": (reencoded("CT_small.dcm", SOPInstanceUID=None), "application/dicom",
                               ("SOPInstanceUID",)),
    "missing-StudyInstanceUID": (reencoded("CT_small.dcm", StudyInstanceUID=None), "application/dicom",
                                 ("StudyInstanceUID",)),
    "invalid-StudyInstanceUID": (reencoded("CT_small.dcm", StudyInstanceUID="1.2.abc.4"), "application/dicom",
                                 ("StudyInstanceUID", "UID")),
    "UID-with-leading-zero": (reencoded("CT_small.dcm", SeriesInstanceUID="1.02.3"), "application/dicom",
                              ("SeriesInstanceUID",)),
    "meta-SOP-differs": (reencoded("CT_small.dcm", SOPInstanceUID="1.2.3.4.5.6"), "application/dicom",
                         ("MediaStorageSOPInstanceUID",)),
    "empty-application-dicom": (b"", "application/dicom", ("empty",)),
    "empty-multipart": (b"", MULTIPART, ("boundary", "malformed", "no parts")),
    "multipart-without-boundary": (multipart(CT), 'multipart/related; type="application/dicom"', ("boundary",)),
    "multipart-wrong-boundary": (multipart(CT, boundary="another"), MULTIPART, ("boundary",)),
    "multipart-cut-mid-part": (multipart(CT)[:20000], MULTIPART, ("closing boundary", "malformed")),
    "multipart-cut-in-part-headers": (b"--bad-input\r\nContent-Type: applic", MULTIPART, ("malformed", "headers")),
    "multipart-only-preamble": (b"just some text, no delimiter at all\r\n" * 10, MULTIPART, ("boundary",)),
    "wrong-content-type-text": (CT, "text/plain", ("Content-Type", "text/plain")),
    "wrong-content-type-json": (CT, "application/json", ("application/json",)),
    "no-content-type": (CT, "", ("Content-Type",)),
    "multipart-of-json": (multipart(b"{}"), 'multipart/related; type="application/dicom+json"; boundary=bad-input',
                          ("application/dicom+json",)),
    "part-is-not-dicom": (multipart(b"%PDF-1.4", part_type="application/pdf"), MULTIPART, ("application/pdf",)),
}
STATUS = {"wrong-content-type-text": 415, "wrong-content-type-json": 415, "no-content-type": 415,
          "multipart-of-json": 415, "part-is-not-dicom": 415, "multipart-without-boundary": 400,
          "multipart-wrong-boundary": 400, "multipart-cut-mid-part": 400, "empty-multipart": 400,
          "multipart-cut-in-part-headers": 400, "multipart-only-preamble": 400}


@pytest.mark.parametrize("case", list(STOW_CASES))
def test_bad_stow_body(unchanged, case):
    body, content_type, words = STOW_CASES[case]
    headers = {"Content-Type": content_type} if content_type else {}
    if not content_type:
        r = unchanged.http.post(unchanged.dicomweb + "/studies", data=body, headers=headers, timeout=60)
    else:
        r = post(unchanged, body, content_type)
    text = problem(r)
    if case in STATUS:
        assert r.status_code == STATUS[case], r.text
    assert any(w.lower() in text.lower() for w in words), text


def test_bad_parts_fail_alone_but_store_nothing_when_all_bad(unchanged):
    r = post(unchanged, multipart(CT[:-1000], b"garbage" * 30, reencoded("CT_small.dcm", StudyInstanceUID=None)),
             MULTIPART)
    assert r.status_code == 409, r.text
    comments = problem(r)
    assert "truncated" in comments and "DICOM" in comments and "StudyInstanceUID" in comments


def _broken_files() -> list:
    """Every file pydicom and pydicom-data ship that reading shows to be broken (not merely
    a valid object without pixel data): it must be refused."""
    cases = []
    for path, verdict in INSPECTED.items():
        if isinstance(verdict, str) and verdict != "no pixel data (not an image)":
            cases.append(pytest.param(path, verdict, id=path.name))
    return cases


# emri_small_jpeg_2k_lossless_too_short.dcm only lacks the sequence delimiter after its
# last fragment, which the frame indexer tolerates on purpose (gateway/imaging/pixeldata.py
# _fragments); every frame is complete, so storing it is a documented choice.
TOLERATED = {"emri_small_jpeg_2k_lossless_too_short.dcm"}


@pytest.mark.parametrize("path,verdict", _broken_files())
def test_broken_pydicom_file_is_refused(unchanged, path: Path, verdict: str):
    if path.name in TOLERATED:
        pytest.skip("tolerated on purpose: " + verdict)
    r = post(unchanged, path.read_bytes())
    assert problem(r)


def test_dicomdir_is_refused(unchanged):
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"
    r = post(unchanged, path.read_bytes())
    assert "SOPClassUID" in problem(r) or "DICOMDIR" in problem(r)


def test_body_cut_off_by_the_client(unchanged):
    """The client announces more bytes than it sends, then stops sending."""
    body = multipart(CT)
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{unchanged.port}\r\n"
            f"Authorization: Bearer {unchanged.token}\r\n"
            f"Content-Type: {MULTIPART}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", unchanged.port), timeout=30) as sock:
        sock.sendall(head + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode() if answer else ""
    if answer:  # the server may also just drop the connection; it must never 2xx/5xx
        status = int(status_line.split()[1])
        assert 400 <= status < 500, answer[:500]
    # and the server still answers (and stored nothing, checked by the fixture)
    assert requests.get(unchanged.url + "/readyz", timeout=10).status_code == 200


def test_chunked_body_cut_off(unchanged):
    """A chunked upload whose generator fails mid-body: the connection breaks, nothing is stored."""
    def chunks():
        data = multipart(CT)
        yield data[:10000]
        raise OSError("client went away")

    with pytest.raises((OSError, requests.RequestException)):
        unchanged.http.post(unchanged.dicomweb + "/studies", data=chunks(), headers={"Content-Type": MULTIPART},
                      timeout=30)
    assert requests.get(unchanged.url + "/readyz", timeout=10).status_code == 200


# --- queries and retrievals that must be refused ------------------------------------------

@pytest.mark.parametrize("query,words", [
    ({"FooBar": "1"}, ("FooBar",)),
    ({"PatientName": "x", "NotAKeyword": "y"}, ("NotAKeyword",)),
    ({"includefield": "Nope"}, ("Nope",)),
    ({"StudyDate": "2020-01-01"}, ("StudyDate",)),
    ({"StudyDate": "20201345"}, ("StudyDate",)),
    ({"StudyDate": "2020"}, ("StudyDate",)),
    ({"StudyDate": "yesterday"}, ("StudyDate",)),
    ({"StudyDate": "20200101-2019"}, ("StudyDate",)),
    ({"StudyDate": "20200301-20200101"}, ("StudyDate",)),
    ({"StudyDate": "-"}, ("StudyDate",)),
    ({"PatientBirthDate": "19991301"}, ("PatientBirthDate",)),
    ({"StudyTime": "251000"}, ("StudyTime",)),
    ({"StudyInstanceUID": "1.2.abc"}, ("StudyInstanceUID",)),
    ({"limit": "abc"}, ("limit",)),
    ({"limit": "-1"}, ("limit",)),
    ({"offset": "x"}, ("offset",)),
    ({"fuzzymatching": "maybe"}, ("fuzzymatching",)),
], ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_bad_qido_parameters_are_400(unchanged, query, words):
    r = unchanged.http.get(unchanged.dicomweb + "/studies", params=query, timeout=30)
    assert r.status_code == 400, r.text
    text = problem(r)
    assert any(w in text for w in words), text


@pytest.mark.parametrize("level", ["/series", "/instances"])
def test_bad_dates_at_lower_levels(unchanged, level):
    r = unchanged.http.get(unchanged.dicomweb + level, params={"SeriesDate": "2020130"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "SeriesDate" in problem(r)


def _instance_url(server, seeded, name: str = "CT_small.dcm") -> str:
    ds = seeded[name]
    return f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


@pytest.mark.parametrize("frames", ["0", "abc", "-1", "1-3", "1.5", "1,x", "%20", "0,1"])
def test_bad_frame_lists_are_400(unchanged, seeded, frames):
    for suffix in ("", "/rendered"):
        r = unchanged.http.get(f"{_instance_url(unchanged, seeded)}/frames/{frames}{suffix}", timeout=30)
        assert r.status_code == 400, r.text
        assert "frame" in problem(r)


def test_frame_beyond_the_last_is_404(unchanged, seeded):
    r = unchanged.http.get(f"{_instance_url(unchanged, seeded, 'emri_small_RLE.dcm')}/frames/3,11", timeout=30)
    assert r.status_code == 404, r.text
    assert "11" in problem(r)


@pytest.mark.parametrize("suffix,accept", [
    ("", "text/html"),
    ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'),
    ("", 'multipart/related; type="image/jpeg"'),
    ("/metadata", "application/dicom+xml"),
    ("/frames/1", "image/jp2"),
    ("/frames/1", 'multipart/related; type="image/jls"'),
    ("/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.80'),
    ("/rendered", "image/tiff"),
    ("/thumbnail", "application/pdf"),
])
def test_unservable_accept_is_406(unchanged, seeded, suffix, accept):
    r = unchanged.http.get(_instance_url(unchanged, seeded) + suffix, headers={"Accept": accept}, timeout=30)
    assert r.status_code == 406, r.text
    assert "Accept" in problem(r) or accept.split(";")[0] in problem(r)


def test_qido_unservable_accept_is_406(unchanged):
    r = unchanged.http.get(unchanged.dicomweb + "/studies", headers={"Accept": "application/dicom+xml"}, timeout=30)
    assert r.status_code == 406, r.text
    assert "application/dicom+json" in problem(r)


@pytest.mark.parametrize("path", [
    "/studies/1.2.3.999", "/studies/1.2.3.999/metadata", "/studies/1.2.3.999/series/4.5",
    "/studies/1.2.3.999/series/4.5/metadata", "/studies/1.2.3.999/series/4.5/instances/6.7",
    "/studies/1.2.3.999/series/4.5/instances/6.7/metadata", "/studies/1.2.3.999/series/4.5/instances/6.7/frames/1",
    "/studies/1.2.3.999/series/4.5/instances/6.7/rendered", "/studies/1.2.3.999/thumbnail",
    "/studies/1.2.3.999/series/4.5/thumbnail", "/studies/1.2.3.999/series/4.5/instances/6.7/bulk/7FE00010",
])
def test_unknown_study_is_404(unchanged, path):
    r = unchanged.http.get(unchanged.dicomweb + path, timeout=30)
    assert r.status_code == 404, r.text
    assert "1.2.3.999" in problem(r) or "not found" in problem(r)


def test_delete_unknown_is_404(unchanged, seeded):
    ds = seeded["CT_small.dcm"]
    for path in ("/studies/1.2.3.999", f"/studies/{ds.StudyInstanceUID}/series/1.2.3.999",
                 f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/1.2.3.999"):
        r = unchanged.http.delete(unchanged.dicomweb + path, timeout=30)
        assert r.status_code == 404, r.text
        assert "not found" in problem(r)


@pytest.mark.parametrize("suffix,params", [
    ("/rendered", {"window": "a,b"}), ("/rendered", {"window": "40,0"}), ("/rendered", {"window": "40,400,cubic"}),
    ("/rendered", {"viewport": "0,0"}), ("/rendered", {"viewport": "big"}), ("/rendered", {"quality": "500"}),
    ("/rendered", {"foo": "1"}), ("/thumbnail", {"viewport": "-5,10"}),
])
def test_bad_rendering_parameters_are_400(unchanged, seeded, suffix, params):
    r = unchanged.http.get(_instance_url(unchanged, seeded) + suffix, params=params, timeout=30)
    assert r.status_code == 400, r.text
    assert problem(r)


@pytest.mark.parametrize("tag_path", ["zzzz", "00100010", "7FE00011", "00082112/99/00081150"])
def test_bad_bulk_data_paths(unchanged, seeded, tag_path):
    r = unchanged.http.get(f"{_instance_url(unchanged, seeded)}/bulk/{tag_path}", timeout=30)
    assert r.status_code in (400, 404), r.text
    assert problem(r)


def test_server_log_has_no_unhandled_error(bad_server):
    """Runs last in this module: no request above crashed a handler."""
    log = bad_server.log_path.read_text(errors="replace") if bad_server.log_path.exists() else ""
    assert "unhandled error" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
