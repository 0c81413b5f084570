"""The AI mask flow against a real ``gateway serve``, over HTTP, on both blob stores: with the
filesystem store the gateway serves the signed PUT URLs itself; with S3 (moto_server) the
client PUTs straight to S3 by presigned URL. Signed URL → PUT → complete → list → download →
delete (objects gone); refused URLs and objects; the cascades of annotation and study deletes."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from auth.base import Principal
from auth.signing import UrlSigner
from gateway.config import load_settings
from tests.conftest import ServerProcess
from tests.e2e.annotation_support import png, put_signed, sha256, store_series
from tests.services import env_of

pytestmark = pytest.mark.e2e

SLICES = 4
W, H = 48, 40  # the series' Columns and Rows: a mask is as large as its slice


class Backend:
    """A running server and a view of its blob store's mask objects."""

    def __init__(self, name: str, server: ServerProcess, moto=None, bucket: str | None = None):
        self.name, self.server, self.moto, self.bucket = name, server, moto, bucket

    def mask_keys(self, clinic: str) -> list[str]:
        if self.moto is not None:
            listed = self.moto.client().list_objects_v2(Bucket=self.bucket, Prefix=f"mask/{clinic}/")
            return sorted(item["Key"] for item in listed.get("Contents", ()))
        root = self.server.data_dir / "blobs"
        return sorted(p.relative_to(root).as_posix() for p in (root / "mask" / clinic).rglob("*") if p.is_file())

    def signer(self) -> UrlSigner:
        settings = load_settings(environ={k: v for k, v in self.server.env.items() if k != "GATEWAY_CONFIG"})
        return UrlSigner.from_settings(settings)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory, moto_server):
    bucket = moto_server.create_bucket()
    srv = ServerProcess(tmp_path_factory.mktemp("masks-s3") / "data",
                        env=env_of({**moto_server.settings(bucket), "storage.fsync": "false"})).start()
    yield Backend("s3", srv, moto_server, bucket)
    srv.stop()


@pytest.fixture(scope="module", params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, server):
    if request.param == "s3":
        return request.getfixturevalue("s3_server")
    return Backend("filesystem", server)


@pytest.fixture
def case(backend):
    """A clinic of its own with a series of SLICES slices, an annotation of it and a mask group."""
    server = backend.server
    clinic = f"masks-{uuid.uuid4().hex[:8]}"
    http = server.session(server.token_for(clinic, "ai-service", ("staff",)))
    doctor = server.session(server.token_for(clinic, "dr.kim", ("doctor",)))
    study, series, sops = store_series(server.url, dict(http.headers), SLICES, shape=(H, W))
    annotation = http.post(f"{server.url}/api/v1/annotations", json={
        "study": study, "series": series, "type": "segmentation"}, timeout=10).json()
    groups = f"{server.url}/api/v1/annotations/{annotation['id']}/mask-groups"
    created = http.post(groups, json={"name": "teeth", "model_name": "dentseg", "model_version": "2.0",
                                      "modality": "CT", "slice_count": SLICES}, timeout=10)
    assert created.status_code == 201, created.text

    class Case:
        pass

    c = Case()
    c.backend, c.server, c.clinic, c.http, c.doctor = backend, server, clinic, http, doctor
    c.study, c.series, c.sops, c.annotation = study, series, sops, annotation
    c.group = created.json()
    c.group_url = f"{groups}/{c.group['id']}"
    return c


def sign(case, items: list[tuple[int, str, bytes]], **extra) -> requests.Response:
    return case.http.post(f"{case.group_url}/signed-url", json={
        "masks": [{"slice": s, "label": label, "size": len(data), "sha256": sha256(data)} for s, label, data in items],
        **extra}, timeout=30)


def test_the_whole_flow(case):
    masks = [(s, label, png(W, H, seed=s + 7 * i)) for s in range(SLICES) for i, label in enumerate(("tooth",
                                                                                                        "canal"))]
    signed = sign(case, masks, ttl=900)
    assert signed.status_code == 201, signed.text
    uploads = signed.json()["uploads"]
    a, g = case.annotation["id"], case.group["id"]
    assert [(u["slice"], u["label"]) for u in uploads] == [(s, label) for s, label, _ in masks]
    assert uploads[0]["key"] == f"mask/{a}/{g}/0000_tooth.png"
    assert [u["sop_instance_uid"] for u in uploads[::2]] == case.sops
    assert all(u["headers"]["Content-Type"] == "image/png" for u in uploads)
    if case.backend.name == "s3":  # straight to S3: the gateway is not in the URL
        assert all(urlsplit(u["url"]).port == case.backend.moto.port for u in uploads)
        assert all("x-amz-checksum-sha256" in u["headers"] for u in uploads)
        assert dict(parse_qsl(urlsplit(uploads[0]["url"]).query))["X-Amz-Expires"] == "900"
    else:
        assert all(urlsplit(u["url"]).path.startswith("/api/v1/blob-uploads/mask/") for u in uploads)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda pair: put_signed(pair[0], pair[1][2]), zip(uploads, masks)))
    assert [r.status_code for r in results] == [200] * len(masks), [r.text for r in results]
    assert case.http.get(f"{case.group_url}/masks", timeout=10).json()["masks"] == []  # not before complete

    done = case.http.post(f"{case.group_url}/complete", timeout=30)
    assert done.status_code == 200, done.text
    assert (done.json()["recorded"], done.json()["already"]) == (len(masks), 0)
    again = case.http.post(f"{case.group_url}/complete", timeout=30)  # idempotent
    assert (again.json()["recorded"], again.json()["already"]) == (0, len(masks))
    assert [m["id"] for m in again.json()["masks"]] == [m["id"] for m in done.json()["masks"]]
    named = case.http.post(f"{case.group_url}/complete", json={"masks": [{"slice": 1, "label": "canal"}]},
                           timeout=30).json()
    assert [(m["slice"], m["label"]) for m in named["masks"]] == [(1, "canal")] and named["recorded"] == 0

    listed = case.doctor.get(f"{case.group_url}/masks", timeout=10).json()["masks"]
    assert [(m["slice"], m["label"]) for m in listed] == sorted((s, label) for s, label, _ in masks)
    by_key = {(s, label): data for s, label, data in masks}
    for mask in listed:
        assert (mask["width"], mask["height"], mask["content_type"]) == (W, H, "image/png")
        assert mask["sha256"] == sha256(by_key[mask["slice"], mask["label"]])
        body = requests.get(mask["download_url"], timeout=10)  # no Authorization: the URL carries it
        assert body.status_code == 200 and body.content == by_key[mask["slice"], mask["label"]]
    one = case.doctor.get(f"{case.group_url}/masks/{listed[0]['id']}", timeout=10)
    assert one.status_code == 200 and one.json()["key"] == listed[0]["key"]
    content = case.doctor.get(f"{case.group_url}/masks/{listed[0]['id']}/content", timeout=10)
    assert content.headers["Content-Type"] == "image/png" and sha256(content.content) == listed[0]["sha256"]
    group = case.doctor.get(case.group_url, timeout=10).json()
    assert (group["model_name"], group["slice_count"], group["mask_type"]) == ("dentseg", SLICES, "segmentation")
    assert [x["id"] for x in case.doctor.get(case.group_url.rsplit("/", 1)[0], timeout=10).json()["mask_groups"]] \
        == [case.group["id"]]

    keys = case.backend.mask_keys(case.clinic)
    assert keys == sorted(f"mask/{case.clinic}/{a}/{g}/{s:04d}_{label}.png" for s, label, _ in masks)
    assert case.http.delete(case.group_url, timeout=10).status_code == 403  # staff: no delete action
    assert case.doctor.delete(case.group_url, timeout=10).status_code == 204
    assert case.backend.mask_keys(case.clinic) == []
    assert case.doctor.get(case.group_url, timeout=10).status_code == 404
    assert case.doctor.get(f"{case.group_url}/masks/{listed[0]['id']}", timeout=10).status_code == 404


def test_complete_names_missing_wrong_and_non_png_objects_and_records_nothing(case):
    good, other, text = png(W, H, seed=1), png(W, H, seed=2), b"not a PNG at all, only text...."
    uploads = sign(case, [(0, "tooth", good), (1, "tooth", good), (2, "tooth", text), (3, "tooth", good)]).json()
    uploads = uploads["uploads"]
    assert put_signed(uploads[0], good).status_code == 200
    wrong = put_signed(uploads[1], other[:len(good)].ljust(len(good), b"\0"))  # same length, other bytes
    if case.backend.name == "s3":
        assert wrong.status_code == 200  # moto takes it (AWS would check x-amz-checksum-sha256): complete catches it
    else:
        assert wrong.status_code == 400 and "sha256" in wrong.json()["message"]
    assert put_signed(uploads[2], text).status_code == 200  # signed for these bytes: only complete sees no PNG
    # slice 3 is never uploaded
    refused = case.http.post(f"{case.group_url}/complete", timeout=30)
    assert refused.status_code == 400, refused.text
    problems = {o["slice"]: o["reason"] for o in refused.json()["errors"]["objects"]}
    assert set(problems) == {1, 2, 3}, problems
    assert ("sha256" in problems[1]) if case.backend.name == "s3" else ("not uploaded" in problems[1])
    assert "not a PNG" in problems[2] and "not uploaded" in problems[3]
    assert refused.json()["errors"]["objects"][0]["key"] == \
        f"mask/{case.annotation['id']}/{case.group['id']}/0001_tooth.png"
    assert case.http.get(f"{case.group_url}/masks", timeout=10).json()["masks"] == []  # nothing recorded
    unknown = case.http.post(f"{case.group_url}/complete", json={"masks": [{"slice": 0, "label": "nerve"}]},
                             timeout=30)
    assert unknown.status_code == 400 and "no upload URL" in unknown.json()["errors"]["objects"][0]["reason"]
    # The good one alone is recorded; the others stay pending until put right.
    alone = case.http.post(f"{case.group_url}/complete", json={"masks": [{"slice": 0, "label": "tooth"}]}, timeout=30)
    assert alone.status_code == 200 and alone.json()["recorded"] == 1
    assert put_signed(uploads[1], good).status_code == 200 and put_signed(uploads[3], good).status_code == 200
    assert case.http.post(f"{case.group_url}/complete", json={"masks": [{"slice": 1, "label": "tooth"}, {
        "slice": 3, "label": "tooth"}]}, timeout=30).json()["recorded"] == 2


def test_complete_refuses_masks_of_another_size_than_their_slice(case):
    """A mask is as wide as its slice's Columns and as high as its Rows (the index's, no blob
    read): a swapped or a smaller PNG is named with both sizes, and nothing is recorded."""
    good, swapped, small = png(W, H, seed=1), png(H, W, seed=1), png(16, 16, seed=1)
    items = [(0, "tooth", good), (1, "tooth", swapped), (2, "tooth", small)]
    uploads = sign(case, items).json()["uploads"]
    for upload, (_, _, data) in zip(uploads, items):
        assert put_signed(upload, data).status_code == 200
    refused = case.http.post(f"{case.group_url}/complete", timeout=30)
    assert refused.status_code == 400, refused.text
    assert "2 of 3 mask object(s) missing or wrong; nothing recorded" in refused.json()["message"]
    objects = refused.json()["errors"]["objects"]
    prefix = f"mask/{case.annotation['id']}/{case.group['id']}"
    assert [(o["slice"], o["key"]) for o in objects] == [(1, f"{prefix}/0001_tooth.png"),
                                                         (2, f"{prefix}/0002_tooth.png")]
    assert objects[0]["reason"] == (f"is {H}x{W} pixels (width x height), but its slice (instance {case.sops[1]}) "
                                    f"is {W}x{H} (Columns x Rows)")
    assert objects[1]["reason"].startswith("is 16x16 pixels") and f"is {W}x{H} (Columns x Rows)" in \
        objects[1]["reason"]
    assert case.http.get(f"{case.group_url}/masks", timeout=10).json()["masks"] == []  # nothing recorded
    # put right, the same uploads complete
    assert put_signed(uploads[0], good).status_code == 200
    for upload, slice_index in ((uploads[1], 1), (uploads[2], 2)):
        fixed = sign(case, [(slice_index, "tooth", good)]).json()["uploads"][0]
        assert put_signed(fixed, good).status_code == 200
    done = case.http.post(f"{case.group_url}/complete", timeout=30)
    assert done.status_code == 200 and done.json()["recorded"] == 3, done.text


def test_signed_url_requests_that_do_not_fit_are_refused(case):
    data = png(W, H)
    for items, status, words in (([(SLICES, "tooth", data)], 400, "outside the series"),
                                 ([(0, "../x", data)], 400, "label"),
                                 ([(0, "tooth", data), (0, "tooth", data)], 400, "twice")):
        response = sign(case, items)
        assert response.status_code == status and words in response.json()["message"], response.text
    huge = case.http.post(f"{case.group_url}/signed-url", json={"masks": [
        {"slice": 0, "label": "t", "size": 17 * 1024 * 1024, "sha256": sha256(data)}]}, timeout=10)
    assert huge.status_code == 413 and "masks.max_bytes" in huge.json()["message"]
    bad_sum = case.http.post(f"{case.group_url}/signed-url", json={"masks": [
        {"slice": 0, "label": "t", "size": 10, "sha256": "XYZ"}]}, timeout=10)
    assert bad_sum.status_code == 400 and "sha256" in bad_sum.json()["message"]
    assert case.http.post(f"{case.group_url}/signed-url", json={"masks": []}, timeout=10).status_code == 400
    ttl = sign(case, [(0, "tooth", data)], ttl=999_999).json()["uploads"][0]["expires_at"]
    assert time.mktime(time.strptime(ttl[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime()) <= 3600 + 5
    # A group whose annotation names no series, and a slice_count beyond the series, are refused.
    note = case.http.post(f"{case.server.url}/api/v1/annotations", json={"study": case.study, "type": "note"},
                          timeout=10).json()
    response = case.http.post(f"{case.server.url}/api/v1/annotations/{note['id']}/mask-groups",
                              json={"name": "x"}, timeout=10)
    assert response.status_code == 400 and "series" in response.json()["message"]
    response = case.http.post(case.group_url.rsplit("/", 1)[0], json={"name": "x", "slice_count": SLICES + 1},
                              timeout=10)
    assert response.status_code == 400 and "slice_count" in response.json()["message"]


# S3 checks its own presigned URLs; moto does not, so test_s3_blob checks their signatures instead.
@pytest.mark.parametrize("backend", ["filesystem"], indirect=True)
def test_gateway_upload_urls_refuse_expired_tampered_and_unfit_bodies(case):
    data = png(W, H)
    upload = sign(case, [(0, "tooth", data)]).json()["uploads"][0]
    parts = urlsplit(upload["url"])
    query = dict(parse_qsl(parts.query))
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"

    def put(url: str, body: bytes = data, content_type: str = "image/png") -> requests.Response:
        return requests.put(url, data=body, headers={"Content-Type": content_type}, timeout=10)

    for name, value in (("size", str(len(data) + 1)), ("sha256", "0" * 64), ("ct", "text/plain"),
                        ("gw_exp", str(int(query["gw_exp"]) + 3600)), ("gw_clinic", "another"),
                        ("gw_roles", "admin"), ("gw_sig", query["gw_sig"][:-2] + "AA")):
        tampered = put(f"{base}?{urlencode({**query, name: value})}")
        assert tampered.status_code == 401, (name, tampered.text)
    other_key = base.replace("0000_tooth.png", "0001_tooth.png")
    assert put(f"{other_key}?{parts.query}").status_code == 401
    # Expired: made with the server's own key, ten minutes ago.
    path = parts.path
    signer = case.backend.signer()
    who = Principal("ai-service", case.clinic, frozenset({"staff"}))
    old = signer.sign("PUT", path, who, params={"ct": "image/png", "size": len(data), "sha256": sha256(data)},
                      ttl=60, now=int(time.time()) - 600)
    expired = put(f"{base}?{urlencode(old)}")
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    assert put(upload["url"], data, "image/jpeg").status_code == 400
    assert put(upload["url"], data + b"x").status_code == 413
    assert put(upload["url"], data[:-1]).status_code == 400
    assert requests.put(upload["url"], data=iter([data[:10], data[10:] + b"more"]),  # chunked, too long
                        headers={"Content-Type": "image/png"}, timeout=10).status_code == 413
    bearer = case.http.put(base, data=data, headers={"Content-Type": "image/png"},
                           params={"ct": "image/png", "size": len(data), "sha256": sha256(data)}, timeout=10)
    assert bearer.status_code == 403  # only signed URLs
    assert case.backend.mask_keys(case.clinic) == []  # nothing of the above was stored
    assert put(upload["url"]).status_code == 200
    assert len(case.backend.mask_keys(case.clinic)) == 1


def _completed(case, n: int = 2) -> list[dict]:
    items = [(s, "tooth", png(W, H, seed=s)) for s in range(n)]
    uploads = sign(case, items).json()["uploads"]
    for upload, (_, _, data) in zip(uploads, items):
        assert put_signed(upload, data).status_code == 200
    return case.http.post(f"{case.group_url}/complete", timeout=30).json()["masks"]


def test_deleting_the_annotation_deletes_its_groups_masks_and_objects(case):
    masks = _completed(case)
    pending = sign(case, [(3, "late", png(W, H, seed=3))]).json()["uploads"][0]  # uploaded, never completed
    assert put_signed(pending, png(W, H, seed=3)).status_code == 200
    assert len(case.backend.mask_keys(case.clinic)) == 3
    url = f"{case.server.url}/api/v1/annotations/{case.annotation['id']}"
    assert case.doctor.delete(url, timeout=10).status_code == 204
    assert case.backend.mask_keys(case.clinic) == []
    assert case.doctor.get(case.group_url, timeout=10).status_code == 404
    assert requests.get(masks[0]["download_url"], timeout=10).status_code in (403, 404)


def test_deleting_the_study_deletes_its_annotations_and_masks(case):
    _completed(case)
    assert case.backend.mask_keys(case.clinic)
    deleted = case.doctor.delete(f"{case.server.url}/dicom-web/studies/{case.study}", timeout=30)
    assert deleted.status_code == 204, deleted.text
    assert case.doctor.get(f"{case.server.url}/api/v1/annotations/{case.annotation['id']}",
                           timeout=10).status_code == 404
    assert case.doctor.get(f"{case.server.url}/api/v1/annotations", params={"study": case.study},
                           timeout=10).json()["annotations"] == []
    assert case.backend.mask_keys(case.clinic) == []


def test_deleting_an_instance_then_the_series(case):
    """An instance delete takes that instance's annotations (the series' ones and their masks
    stay with the series); the series delete takes the series' annotations and masks, and,
    the series being the study's only one, the study's own annotations too."""
    _completed(case)
    api = f"{case.server.url}/api/v1/annotations"
    note = case.http.post(api, json={"study": case.study, "type": "note"}, timeout=10).json()
    on_slice = case.http.post(api, json={"study": case.study, "series": case.series, "instance": case.sops[0],
                                         "type": "measurement"}, timeout=10).json()
    assert on_slice.get("instance") == case.sops[0], on_slice
    series_url = f"{case.server.url}/dicom-web/studies/{case.study}/series/{case.series}"
    assert case.doctor.delete(f"{series_url}/instances/{case.sops[0]}", timeout=30).status_code == 204
    assert case.doctor.get(f"{api}/{on_slice['id']}", timeout=10).status_code == 404
    for kept in (note, case.annotation):
        assert case.doctor.get(f"{api}/{kept['id']}", timeout=10).status_code == 200
    assert len(case.doctor.get(f"{case.group_url}/masks", timeout=10).json()["masks"]) == 2
    assert len(case.backend.mask_keys(case.clinic)) == 2

    assert case.doctor.delete(series_url, timeout=30).status_code == 204
    for gone in (note, case.annotation):
        assert case.doctor.get(f"{api}/{gone['id']}", timeout=10).status_code == 404
    assert case.doctor.get(case.group_url, timeout=10).status_code == 404
    assert case.backend.mask_keys(case.clinic) == []


def test_mask_objects_live_in_the_clinic_namespace(case):
    _completed(case, 1)
    keys = case.backend.mask_keys(case.clinic)
    assert keys == [f"mask/{case.clinic}/{case.annotation['id']}/{case.group['id']}/0000_tooth.png"]
    if case.backend.name == "filesystem":
        assert Path(case.server.data_dir / "blobs" / keys[0]).read_bytes() == png(W, H, seed=0)
