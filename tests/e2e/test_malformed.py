"""Malformed input that once reached a 500 or no answer, each now a precise 4xx (or DICOM
failure status) naming the problem, with nothing stored: values pydicom cannot convert
(unknown VRs, a VR that does not fit, odd lengths), delimiters outside any sequence, deep
nesting, broken chunked framing, too many parts, request lines and headers gunicorn refuses.
Over HTTP to a server of its own, and by C-STORE to its DIMSE listener."""
from __future__ import annotations

import io
import json
import random
import socket
import struct

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from conformance import mutations
from tests.data import sample_file
from tests.e2e.dimse_support import SCP_AE, DimseServer

pytestmark = pytest.mark.e2e

BOUNDARY = "malformed"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, STORED, COMMENT, REASON = "00081198", "00081199", "00000902", "00081197"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    srv = DimseServer(tmp_path_factory.mktemp("malformed") / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


def ct(study: str | None = None) -> bytes:
    """CT_small.dcm in Explicit VR Little Endian under new UIDs."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return mutations.write(ds)


def element(data: bytes, tag: int) -> mutations.Element:
    return next(e for e in mutations.elements(data) if e.tag == tag)


def with_vr(data: bytes, tag: int, vr: bytes) -> bytes:
    e = element(data, tag)
    return data[:e.offset + 4] + vr + data[e.offset + 6:]


def with_length(data: bytes, tag: int, length: int) -> bytes:
    e = element(data, tag)
    return data[:e.length_at] + length.to_bytes(e.length_size, "little") + data[e.length_at + e.length_size:]


def with_item(data: bytes, before: int, item: int) -> bytes:
    at = element(data, before).offset
    return data[:at] + struct.pack("<HHI", 0xFFFE, item, 0) + data[at:]


def planar_configuration_as_fd() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(ct()))
    ds.PlanarConfiguration = 0
    return with_vr(mutations.write(ds), 0x00280006, b"FD")


def _nested(depth: int) -> bytes:
    data = ct()
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                          0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    inner = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"X "
    at = next(e.offset for e in mutations.elements(data) if e.tag > 0x0040A730)
    return data[:at] + opening * depth + inner + closing * depth + data[at:]


UNREADABLE = {
    # name: (file, words its failure comment must hold)
    **{f"unknown-VR-XX-in-{tag:08X}": (lambda tag=tag: with_vr(ct(), tag, b"XX"), ("Unknown Value Representation",
                                                                                    f"({tag >> 16:04X},{tag & 0xFFFF:04X})"))
       for tag in (0x00080018, 0x00080020, 0x00100030, 0x00200013, 0x00280102)},
    "sequence-delimiter-outside-a-sequence": (lambda: with_item(ct(), 0x00100010, 0xE0DD), ("(FFFE,E0DD)", "outside")),
    "item-outside-a-sequence": (lambda: with_item(ct(), 0x00100010, 0xE000), ("(FFFE,E000)", "outside")),
    "item-delimiter-outside-a-sequence": (lambda: with_item(ct(), 0x00100010, 0xE00D), ("(FFFE,E00D)", "outside")),
    "item-delimiter-opening-the-data-set": (lambda: with_item(ct(), 0x00080005, 0xE00D), ("FFFE", "outside")),
    "PlanarConfiguration-as-FD": (planar_configuration_as_fd, ("(0028,0006)", "PlanarConfiguration")),
    "Rows-as-FD": (lambda: with_vr(ct(), 0x00280010, b"FD"), ("(0028,0010)", "Rows")),
    "Rows-as-AT": (lambda: with_vr(ct(), 0x00280010, b"AT"), ("Rows", "cannot be read")),
    "odd-length-of-Rows": (lambda: with_length(ct(), 0x00280010, 3), ("cannot be read", "truncated")),
    "odd-length-of-InstanceNumber": (lambda: with_length(ct(), 0x00200013, 3), ("cannot be read", "truncated")),
    "sequences-nested-33-deep": (lambda: _nested(33), ("ingest.max_sequence_depth=32",)),
    "sequences-nested-2000-deep": (lambda: _nested(2000), ("nested too deeply", "max_sequence_depth")),
}


def _found(gateway, sop: str) -> bool:
    r = gateway.http.get(gateway.dicomweb + "/instances", params={"SOPInstanceUID": sop}, timeout=30)
    assert r.status_code == 200, r.text
    return bool(r.json())


def _instances(gateway, study: str) -> list[str]:
    r = gateway.http.get(f"{gateway.dicomweb}/studies/{study}/instances", timeout=30)
    assert r.status_code in (200, 404), r.text
    return [i["00080018"]["Value"][0] for i in r.json()] if r.status_code == 200 else []


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_instance_fails_alone_naming_the_element(gateway, case):
    make, words = UNREADABLE[case]
    study = generate_uid()
    bad, good = make(), ct(study)
    bad_sop = mutations.renamed(ct(), study)[1]  # a UID never sent: the bad file keeps its own
    parts = [bad, good]
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
    r = gateway.http.post(gateway.dicomweb + "/studies", data=body, headers={"Content-Type": MULTIPART}, timeout=60)
    assert r.status_code == 202, r.text  # the good one stored, the bad one failed
    answer = r.json()
    failure = answer[FAILED]["Value"]
    assert len(failure) == 1 and failure[0][REASON]["Value"] == [0xC000], failure
    comment = failure[0][COMMENT]["Value"][0]
    assert any(w in comment for w in words), comment
    assert len(answer[STORED]["Value"]) == 1
    good_sop = answer[STORED]["Value"][0]["00081155"]["Value"][0]
    assert _found(gateway, good_sop)
    assert _instances(gateway, study) == [good_sop]  # nothing of the bad one
    assert not _found(gateway, bad_sop)


@pytest.mark.parametrize("seed", range(40))
def test_bit_flips_in_a_small_rgb_header_never_reach_a_500(gateway, seed):
    ds = pydicom.dcmread(sample_file("SC_rgb.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if ds.file_meta.TransferSyntaxUID.is_implicit_VR:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = mutations.write(ds)
    flipped = mutations.flip_bits(random.Random(seed), data, mutations.elements(data))
    r = gateway.http.post(gateway.dicomweb + "/studies", data=flipped, headers={"Content-Type": "application/dicom"},
                          timeout=60)
    assert r.status_code in (200, 409), r.text
    if r.status_code == 409:
        assert r.json()[FAILED]["Value"][0][COMMENT]["Value"][0]


# --- HTTP framing --------------------------------------------------------------------------

def exchange(gateway, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    return int(lines[0].split()[1]), headers, body[:length]


def stow_head(gateway, **headers) -> bytes:
    lines = ["POST /dicom-web/studies HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}",
             f"Authorization: Bearer {gateway.token}", f"Content-Type: {MULTIPART}", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def one_part(data: bytes) -> bytes:
    return (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--"
            + BOUNDARY.encode() + b"--\r\n")


@pytest.mark.parametrize("framing,words", [
    (lambda b: b"zz\r\n" + b + b"\r\n0\r\n\r\n", ("InvalidChunkSize", "zz")),
    (lambda b: b"%x\r\n" % (len(b) - 7) + b + b"\r\n0\r\n\r\n", ("chunk terminator",)),
    (lambda b: b"%x\r\n" % len(b) + b + b"XX0\r\n\r\n", ("chunk terminator",)),
    (lambda b: b"%x\r\n" % (len(b) + 100) + b + b"\r\n0\r\n\r\n", ("ended before it was complete",)),
    (lambda b: b"%x\r\n" % len(b) + b + b"\r\n", ("ended before it was complete",)),  # no last chunk
], ids=["not-hexadecimal", "size-too-small", "no-crlf-after-data", "size-beyond-the-body", "no-last-chunk"])
def test_broken_chunked_framing_is_a_400_naming_it(gateway, framing, words):
    study = generate_uid()
    status, headers, body = exchange(gateway, stow_head(gateway, Transfer_Encoding="chunked")
                                     + framing(one_part(ct(study))))
    assert status == 400 and headers["content-type"] == "application/json", body
    message = json.loads(body)["message"]
    assert any(w in message for w in words), message
    assert not _instances(gateway, study)  # nothing stored


def test_a_body_of_20000_empty_parts_is_refused_by_the_part_limit(gateway):
    body = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n\r\n") * 20000 \
        + b"--" + BOUNDARY.encode() + b"--\r\n"
    r = gateway.http.post(gateway.dicomweb + "/studies", data=body, headers={"Content-Type": MULTIPART}, timeout=30)
    assert r.status_code == 413, r.text
    assert "dicomweb.max_parts=10000" in r.json()["message"]


def test_a_few_empty_parts_each_fail_alone(gateway):
    body = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n\r\n") * 50 \
        + b"--" + BOUNDARY.encode() + b"--\r\n"
    r = gateway.http.post(gateway.dicomweb + "/studies", data=body, headers={"Content-Type": MULTIPART}, timeout=30)
    assert r.status_code == 409, r.text
    comments = {item[COMMENT]["Value"][0] for item in r.json()[FAILED]["Value"]}
    assert len(r.json()[FAILED]["Value"]) == 50 and comments == {"empty body: no DICOM bytes"}


@pytest.mark.parametrize("line,status,words", [
    (b"GET /dicom-web/studies?PatientName=\xff\xfe HTTP/1.1", 400, ("Invalid Request Line", "ASCII")),
    (b"GET /dicom-web/studies?PatientName=a\x01b HTTP/1.1", 400, ("Invalid Request Line", "ASCII")),
    (b"GET /dicom-web/studies?PatientName=" + b"a" * 9000 + b" HTTP/1.1", 414, ("server.max_request_line",)),
], ids=["invalid-utf8", "control-byte", "request-line-too-long"])
def test_the_http_servers_own_refusals_are_json(gateway, line, status, words):
    got, headers, body = exchange(gateway, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == status and headers["content-type"] == "application/json", body
    answer = json.loads(body)
    assert answer["code"] == status and any(w in answer["message"] for w in words), answer


def test_headers_too_long_are_a_431_in_json(gateway):
    got, headers, body = exchange(gateway, b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Big: "
                                  + b"a" * 9000 + b"\r\nConnection: close\r\n\r\n")
    assert got == 431 and headers["content-type"] == "application/json", body
    assert "server.max_header_bytes" in json.loads(body)["message"]


# --- the same files by C-STORE -------------------------------------------------------------

def test_unreadable_files_by_c_store_fail_and_the_association_goes_on(gateway, tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are, undecoded
    ae = AE(ae_title="GWTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title=SCP_AE)
    assert assoc.is_established
    try:
        for i, case in enumerate(["unknown-VR-XX-in-00080020", "PlanarConfiguration-as-FD", "Rows-as-FD",
                                  "sequences-nested-2000-deep", "sequence-delimiter-outside-a-sequence"]):
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(UNREADABLE[case][0]())
            status = assoc.send_c_store(path)
            assert status.Status == 0xC000, (case, status)
            assert status.get("ErrorComment"), case
            assert assoc.is_established, case
            good = tmp_path / f"good{i}.dcm"
            good.write_bytes(ct())
            assert assoc.send_c_store(good).Status == 0x0000, case
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()


def test_an_unreadable_entry_of_a_zip_upload_is_rejected_alone(gateway):
    import zipfile

    study = generate_uid()
    good = ct(study)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ct/bad.dcm", with_vr(ct(study), 0x00080020, b"XX"))
        archive.writestr("ct/good.dcm", good)
    r = gateway.http.post(gateway.url + "/api/v1/uploads", data=buffer.getvalue(),
                          headers={"Content-Type": "application/zip"}, timeout=60)
    assert r.status_code in (200, 201), r.text
    listing = gateway.http.get(f"{gateway.url}/api/v1/uploads/{r.json()['upload']['id']}", timeout=30).json()
    outcomes = {e["name"]: e for e in listing["entries"]}
    assert outcomes["ct/good.dcm"]["outcome"] == "stored", outcomes
    bad = outcomes["ct/bad.dcm"]
    assert bad["outcome"] == "rejected" and "(0008,0020)" in bad["reason"], bad
    assert _instances(gateway, study) == [pydicom.dcmread(io.BytesIO(good), stop_before_pixels=True).SOPInstanceUID]


def test_a_body_longer_than_its_content_length(gateway):
    """Bytes beyond Content-Length are not the body: what was declared is read (here a cut
    multipart: 400, nothing stored); on a kept-alive connection the rest would be the next
    request line, refused in JSON like any malformed one."""
    study = generate_uid()
    body = one_part(ct(study))
    status, headers, answer = exchange(gateway, stow_head(gateway, Content_Length=len(body) - 500) + body)
    assert status == 400 and "malformed" in json.loads(answer)["message"], answer
    assert not _instances(gateway, study)


def test_a_part_header_block_beyond_the_limit_is_a_400(gateway):
    body = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\nX-Long: " + b"a" * 20000
            + b"\r\n\r\n" + ct() + b"\r\n--" + BOUNDARY.encode() + b"--\r\n")
    r = gateway.http.post(gateway.dicomweb + "/studies", data=body, headers={"Content-Type": MULTIPART}, timeout=30)
    assert r.status_code == 400 and "dicomweb.max_part_header_bytes" in r.json()["message"], r.text


def test_a_refused_large_body_closes_the_connection_saying_so(gateway):
    """gunicorn keeps a connection only if it can drain the unread body: the refusal says
    Connection: close, so a client's next request goes on a new connection."""
    body = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n\r\n") * 20000 \
        + b"--" + BOUNDARY.encode() + b"--\r\n"
    session = gateway.session()
    r = session.post(gateway.dicomweb + "/studies", data=body, headers={"Content-Type": MULTIPART}, timeout=30)
    assert r.status_code == 413 and r.headers["Connection"].lower() == "close", r.headers
    assert session.get(gateway.dicomweb + "/studies", params={"limit": 1}, timeout=30).status_code == 200
