"""Zip downloads of whole studies, series and slice ranges (``/api/v1/studies/…/archive``) from a
real ``gateway serve``: byte-for-byte contents, slice positions, resumed and parallel ranged
downloads, conditional requests, the deflated variant, and who may download."""
from __future__ import annotations

import io
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from gateway.synthetic import cbct_series, to_bytes
from tests.helpers import multipart_body, multipart_content_type, multipart_parts

pytestmark = pytest.mark.e2e

SLICES = 100
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# name: (series key, InstanceNumber kept or not): CT_small and SC_rgb share a series and
# InstanceNumber 1, so both are named by their SOP Instance UID; rtplan has no InstanceNumber.
PYDICOM_FILES = {"CT_small.dcm": "a", "SC_rgb.dcm": "a", "MR_small_RLE.dcm": "b", "JPEG2000.dcm": "c",
                 "rtplan.dcm": "d", "emri_small.dcm": "e"}
NAME = re.compile(r"^(?P<patient>[^/]+)/(?P<date>[^/]+)_(?P<study>[0-9.]+)/(?P<number>[^/]+)_(?P<series>[0-9.]+)/"
                  r"(?P<file>[^/]+)\.dcm$")


@dataclass
class Instance:
    data: bytes = field(repr=False)
    series: str
    z: float | None = None  # the CBCT's ImagePositionPatient z
    origin: str = ""  # the pydicom test file it was made from


@dataclass
class Study:
    uid: str
    cbct_series: str
    instances: dict[str, Instance]  # by SOP Instance UID

    def of_series(self, series: str) -> dict[str, Instance]:
        return {sop: i for sop, i in self.instances.items() if i.series == series}

    @property
    def by_position(self) -> list[str]:
        """The CBCT's SOP Instance UIDs from the lowest slice to the highest."""
        return sorted(self.of_series(self.cbct_series), key=lambda sop: self.instances[sop].z)


def stow(server, instances: list[bytes], token: str | None = None) -> None:
    session = server.session(token) if token else server.http
    response = session.post(server.dicomweb + "/studies", data=multipart_body(instances, "archive-e2e"),
                            headers={"Content-Type": multipart_content_type("archive-e2e"),
                                     "Accept": "application/dicom+json"}, timeout=120)
    assert response.status_code == 200, response.text[:500]


def make_study(server, *, slices: int = SLICES, size: int = 64, token: str | None = None,
               pydicom_files: bool = True) -> Study:
    study, cbct = generate_uid(), generate_uid()
    instances: dict[str, Instance] = {}
    data = []
    for index, ds in enumerate(cbct_series(slices, size, study_uid=study, series_uid=cbct, patient_id="ARCH-1")):
        # InstanceNumber against the slice order: slices=1-1 must be the lowest slice (InstanceNumber N),
        # which only the positions tell.
        ds.InstanceNumber = slices - index
        encoded = to_bytes(ds)
        instances[ds.SOPInstanceUID] = Instance(encoded, cbct, float(ds.ImagePositionPatient[2]))
        data.append(encoded)
    series_of = {key: generate_uid() for key in set(PYDICOM_FILES.values())}
    for name, key in PYDICOM_FILES.items() if pydicom_files else ():
        ds = pydicom.dcmread(get_testdata_file(name, download=False))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_of[key]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances[ds.SOPInstanceUID] = Instance(buffer.getvalue(), series_of[key], origin=name)
        data.append(buffer.getvalue())
    stow(server, data, token)
    return Study(study, cbct, instances)


@pytest.fixture(scope="module")
def study(server) -> Study:
    return make_study(server)


def url(server, study: Study | str, series: str | None = None) -> str:
    uid = study if isinstance(study, str) else study.uid
    return f"{server.url}/api/v1/studies/{uid}" + (f"/series/{series}" if series else "") + "/archive"


def get(server, study, series=None, session=None, **kw) -> requests.Response:
    return (session or server.http).get(url(server, study, series), timeout=120, **kw)


def entries(body: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    return {info.filename: archive.read(info) for info in archive.infolist()}


def sop_of(data: bytes) -> str:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


def check_contents(body: bytes, expected: dict[str, Instance]) -> dict[str, str]:
    """Every entry is one expected instance byte for byte, each exactly once; name → SOP UID."""
    found = entries(body)
    names = {name: sop_of(data) for name, data in found.items()}
    assert sorted(names.values()) == sorted(expected)
    for name, data in found.items():
        assert data == expected[names[name]].data, name
    return names


# --- contents -------------------------------------------------------------------------------------

def test_study_archive_is_every_stored_instance_byte_for_byte(server, study):
    response = get(server, study)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{study.uid}.zip"'
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert re.fullmatch(r'"[0-9a-f]{40}"', response.headers["ETag"])
    names = check_contents(response.content, study.instances)
    assert len(names) == SLICES + len(PYDICOM_FILES)
    for name, sop in names.items():
        parts = NAME.match(name)
        assert parts, name
        assert (parts["patient"], parts["date"], parts["study"]) == ("ARCH-1", "20240115", study.uid)
        assert parts["series"] == study.instances[sop].series
    cbct_names = {n for n, sop in names.items() if study.instances[sop].series == study.cbct_series}
    assert {NAME.match(n)["file"] for n in cbct_names} == {f"{k:04d}" for k in range(1, SLICES + 1)}
    # the two instances sharing InstanceNumber 1 in one series, and the plan without one: SOP UIDs
    files = {study.instances[sop].origin: NAME.match(n)["file"] for n, sop in names.items()}
    sops = {i.origin: sop for sop, i in study.instances.items()}
    for origin in ("CT_small.dcm", "SC_rgb.dcm", "rtplan.dcm"):
        assert files[origin] == sops[origin]
    assert (files["MR_small_RLE.dcm"], files["JPEG2000.dcm"], files["emri_small.dcm"]) == ("0001", "0003", "0001")
    # the same bytes as the WADO-RS retrieve of the stored instances
    wado = server.http.get(f"{server.dicomweb}/studies/{study.uid}", headers={"Accept": DICOM_ANY}, timeout=120)
    assert sorted(body for _, body in multipart_parts(wado)) == sorted(entries(response.content).values())
    # the same archive on every request
    again = get(server, study)
    assert again.content == response.content and again.headers["ETag"] == response.headers["ETag"]


def test_series_archive(server, study):
    response = get(server, study, study.cbct_series)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == f'attachment; filename="{study.cbct_series}.zip"'
    names = check_contents(response.content, study.of_series(study.cbct_series))
    assert {NAME.match(n)["number"] for n in names} == {"1"}
    other = next(i.series for i in study.instances.values() if i.series != study.cbct_series)
    check_contents(get(server, study, other).content, study.of_series(other))


def test_head_tells_length_and_etag_without_a_body(server, study):
    full = get(server, study)
    head = server.http.head(url(server, study), timeout=60)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == full.headers["Content-Length"]
    assert head.headers["ETag"] == full.headers["ETag"]


@pytest.mark.parametrize("first, last", [(1, 1), (SLICES, SLICES), (40, 59), (1, SLICES)])
def test_slices_are_positions_along_the_slice_axis(server, study, first, last):
    response = get(server, study, study.cbct_series, params={"slices": f"{first}-{last}"})
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Disposition"] == \
        f'attachment; filename="{study.cbct_series}_slices_{first}-{last}.zip"'
    wanted = study.by_position[first - 1:last]
    names = check_contents(response.content, {sop: study.instances[sop] for sop in wanted})
    assert list(names.values()) == wanted  # in slice order, lowest first
    zs = [float(pydicom.dcmread(io.BytesIO(data)).ImagePositionPatient[2])
          for data in entries(response.content).values()]
    assert zs == sorted(i.z for i in study.of_series(study.cbct_series).values())[first - 1:last]
    # the entries keep the names they have in the whole series' archive
    whole = check_contents(get(server, study, study.cbct_series).content, study.of_series(study.cbct_series))
    assert set(names) <= set(whole)
    if first == last == 1:
        assert NAME.match(next(iter(names)))["file"] == f"{SLICES:04d}"  # the lowest slice has the last number


@pytest.mark.parametrize("value", ["0-3", "5-2", f"1-{SLICES + 1}", f"{SLICES + 1}", "abc", "1-2-3", "", "-5"])
def test_bad_slices_name_the_valid_range(server, study, value):
    response = get(server, study, study.cbct_series, params={"slices": value})
    assert response.status_code == 400
    assert f"slices=1-{SLICES}" in response.json()["message"], response.json()


def test_slices_on_a_study_are_a_400(server, study):
    response = get(server, study, params={"slices": "1-5"})
    assert response.status_code == 400
    assert "slices select positions within one series" in response.json()["message"]


@pytest.mark.parametrize("params", [{"compress": "zstd"}, {"colour": "red"}])
def test_other_parameters_are_a_400(server, study, params):
    response = get(server, study, params=params)
    assert response.status_code == 400 and list(params)[0] in response.json()["message"]


# --- ranges ---------------------------------------------------------------------------------------

def test_an_interrupted_download_resumed_with_range_is_the_same_bytes(server, study):
    full = get(server, study)
    length, etag = len(full.content), full.headers["ETag"]
    for cut in (1, 29, 4000, length // 2, length - 23, length - 1):
        with server.http.get(url(server, study), stream=True, timeout=60) as partial:
            received = bytearray()
            for chunk in partial.iter_content(8192):
                received += chunk
                if len(received) >= cut:
                    break
        received = received[:cut]  # the connection is closed with that much on disk
        rest = server.http.get(url(server, study), headers={"Range": f"bytes={cut}-", "If-Range": etag}, timeout=60)
        assert rest.status_code == 206, rest.text[:200]
        assert rest.headers["Content-Range"] == f"bytes {cut}-{length - 1}/{length}"
        assert int(rest.headers["Content-Length"]) == length - cut and rest.headers["ETag"] == etag
        assert bytes(received) + rest.content == full.content


def test_parallel_ranges_reassemble_to_the_whole(server, study):
    full = get(server, study, study.cbct_series).content
    length = len(full)
    bounds = [0, 1, 30, length // 5, length // 3, length // 2 + 7, length - 100, length]

    def fetch(span):
        start, stop = span
        with requests.Session() as session:
            session.headers.update(server.http.headers)
            response = get(server, study, study.cbct_series, session=session,
                           headers={"Range": f"bytes={start}-{stop - 1}"})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{length}"
        return response.content

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(fetch, zip(bounds, bounds[1:])))
    assert b"".join(parts) == full
    suffix = get(server, study, study.cbct_series, headers={"Range": "bytes=-1000"})
    assert suffix.status_code == 206 and suffix.content == full[-1000:]


def test_a_range_beyond_the_end_is_a_416(server, study):
    length = int(get(server, study).headers["Content-Length"])
    for value in (f"bytes={length}-", f"bytes={length + 10}-{length + 20}", "bytes=-0"):
        response = get(server, study, headers={"Range": value})
        assert response.status_code == 416, value
        assert response.headers["Content-Range"] == f"bytes */{length}"


def test_several_ranges_or_a_malformed_one_get_the_whole(server, study):
    full = get(server, study).content
    for value in ("bytes=0-10,20-30", "bytes=10-5", "lines=1-2"):
        response = get(server, study, headers={"Range": value})
        assert response.status_code == 200 and response.content == full, value


def test_if_range_with_a_stale_etag_gives_the_whole_new_archive(server):
    small = make_study(server, slices=4, size=16, pydicom_files=False)
    first = get(server, small)
    etag, length = first.headers["ETag"], len(first.content)
    extra = next(cbct_series(1, 16, study_uid=small.uid, series_uid=generate_uid(), seed=9))
    stow(server, [to_bytes(extra)])  # the study changed since the download started
    resumed = get(server, small, headers={"Range": f"bytes={length // 2}-", "If-Range": etag})
    assert resumed.status_code == 200 and resumed.headers["ETag"] != etag
    assert int(resumed.headers["Content-Length"]) == len(resumed.content) > length
    assert len(entries(resumed.content)) == 5
    new_etag = resumed.headers["ETag"]
    for if_range in ("W/" + new_etag, "Wed, 21 Oct 2015 07:28:00 GMT", '"something-else"'):
        response = get(server, small, headers={"Range": "bytes=0-9", "If-Range": if_range})
        assert response.status_code == 200 and response.content == resumed.content, if_range
    assert get(server, small, headers={"Range": "bytes=0-9", "If-Range": new_etag}).status_code == 206


def test_if_none_match(server, study):
    etag = get(server, study).headers["ETag"]
    response = get(server, study, headers={"If-None-Match": etag})
    assert response.status_code == 304 and response.content == b"" and response.headers["ETag"] == etag
    assert get(server, study, headers={"If-None-Match": '"other"'}).status_code == 200


# --- deflated ---------------------------------------------------------------------------------------

def test_deflated_archive_round_trips(server, study):
    stored = get(server, study)
    response = get(server, study, params={"compress": "deflate"}, headers={"Range": "bytes=0-99"})
    assert response.status_code == 200  # no ranges on a deflated archive
    assert "Content-Length" not in response.headers and response.headers["Accept-Ranges"] == "none"
    assert "ETag" not in response.headers
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    assert entries(response.content) == entries(stored.content)  # the same names, the same bytes
    assert len(response.content) < len(stored.content)


# --- who may download ---------------------------------------------------------------------------------

def share(server, study: Study, targets: list[dict], permissions: list[str], series: str | None = None) -> dict:
    body = {"study": study.uid, "targets": targets, "permissions": permissions, "ttl": 3600}
    if series:
        body["series"] = series
    response = server.http.post(server.url + "/api/v1/shares", json=body, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["shares"][0]


def test_another_clinic_gets_404(server, study):
    other = server.session(server.token_for("clinic-elsewhere", "dr.who", ["doctor"]))
    for series in (None, study.cbct_series):
        response = get(server, study, series, session=other)
        assert response.status_code == 404, response.text[:200]
        assert "not found" in response.json()["message"]
    assert get(server, "1.2.3.999999", session=server.http).status_code == 404


def test_view_only_shares_cannot_download_and_download_shares_can(server):
    owned = make_study(server, slices=6, size=16, pydicom_files=False)
    viewer = server.session(server.token_for("clinic-view", "dr.view", ["doctor"]))
    share(server, owned, [{"type": "clinic", "id": "clinic-view"}], ["view"])
    assert viewer.get(f"{server.dicomweb}/studies/{owned.uid}/metadata", timeout=60).status_code == 200  # sees it
    assert get(server, owned, session=viewer).status_code == 404  # as WADO-RS retrieve answers
    assert viewer.get(f"{server.dicomweb}/studies/{owned.uid}", headers={"Accept": DICOM_ANY},
                      timeout=60).status_code == 404
    downloader = server.session(server.token_for("clinic-dl", "dr.dl", ["doctor"]))
    share(server, owned, [{"type": "clinic", "id": "clinic-dl"}], ["view", "download"])
    response = get(server, owned, session=downloader)
    assert response.status_code == 200
    assert response.content == get(server, owned).content
    check_contents(response.content, owned.instances)


def test_a_link_token_downloads_its_study_only(server, study):
    mine = make_study(server, slices=3, size=16, pydicom_files=False)
    link = share(server, mine, [{"type": "link"}], ["view", "download"])
    token = link["token"]
    assert token.startswith("gwl_")
    holder = server.session(token)
    response = get(server, mine, session=holder)
    assert response.status_code == 200
    check_contents(response.content, mine.instances)
    assert get(server, study, session=holder).status_code == 404  # another study of the same clinic
    # without a header, as a plain link (?share=…)
    plain = requests.get(url(server, mine), params={"share": token}, timeout=60)
    assert plain.status_code == 200 and plain.content == response.content
    ranged = get(server, mine, session=holder, headers={"Range": "bytes=5-"})
    assert ranged.status_code == 206 and ranged.content == response.content[5:]
    viewing = share(server, mine, [{"type": "link"}], ["view"])
    assert get(server, mine, session=server.session(viewing["token"])).status_code == 404
    assert requests.get(url(server, mine), timeout=60).status_code == 401  # no credentials at all
