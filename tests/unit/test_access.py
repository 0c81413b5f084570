"""Access decisions in process: series shares, the patient role, the audit's read window,
and the 401/403/404 error shapes."""
from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from gateway.config import load_settings
from storage.records import AuditQuery
from tests.helpers import multipart_body, multipart_content_type
from tests.services import dicom_instance


@pytest.fixture
def app(tmp_path):
    from gateway.app import create_app

    settings = load_settings(overrides={"storage.data_dir": str(tmp_path / "data"), "log.level": "warning",
                                        "storage.fsync": False, "auth.patient_role": True}, environ={})
    app = create_app(settings)
    yield app
    app.extensions["gateway"].close()


def stow(client, headers, *instances: bytes):
    response = client.post("/dicom-web/studies", data=multipart_body(instances, "b"), headers={
        **headers, "Content-Type": multipart_content_type("b")})
    assert response.status_code == 200, response.get_json()


def test_error_shapes(client, auth):
    missing = client.get("/dicom-web/studies")
    assert missing.status_code == 401
    assert missing.get_json() == {"code": 401, "status": "Unauthorized", "message": missing.get_json()["message"]}
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="dental-pacs-gateway"'  # no error code: no token
    bad = client.get("/dicom-web/studies", headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    refused = client.delete(f"/dicom-web/studies/{generate_uid()}", headers=auth.headers(roles=["staff"]))
    assert refused.status_code == 403
    assert refused.get_json() == {"code": 403, "status": "Forbidden", "message": "delete is not allowed for roles: staff",
                                  "errors": {"action": "delete"}}
    hidden = client.get(f"/dicom-web/studies/{generate_uid()}/metadata", headers=auth.headers())
    assert hidden.status_code == 404 and hidden.get_json()["code"] == 404


def test_series_share_shows_that_series_only(app, client, auth):
    owner = auth.headers("A", "dr.a", ["doctor"])
    study, kept, other = generate_uid(), generate_uid(), generate_uid()
    stow(client, owner, dicom_instance(study, kept, size=8), dicom_instance(study, other, size=8, seed=1))
    made = client.post("/api/v1/shares", headers=owner, json={
        "study": study, "series": kept, "targets": [{"type": "clinic", "id": "B"}]})
    assert made.status_code == 201 and made.get_json()["shares"][0]["series"] == kept
    reader = auth.headers("B", "dr.b", ["lab"])
    series = client.get(f"/dicom-web/studies/{study}/series", headers=reader).get_json()
    assert [s["0020000E"]["Value"][0] for s in series] == [kept]
    metadata = client.get(f"/dicom-web/studies/{study}/metadata", headers=reader).get_json()
    assert {m["0020000E"]["Value"][0] for m in metadata} == {kept}
    assert client.get(f"/dicom-web/studies/{study}/series/{other}/metadata", headers=reader).status_code == 404
    assert client.get(f"/dicom-web/studies/{study}/series/{kept}/metadata", headers=reader).status_code == 200


def test_patient_reads_what_is_shared_with_them_only(app, client, auth):
    clinic = auth.headers("A", "dr.a", ["doctor"])
    theirs, not_theirs = generate_uid(), generate_uid()
    stow(client, clinic, dicom_instance(theirs, size=8), dicom_instance(not_theirs, size=8, seed=2))
    assert client.post("/api/v1/shares", headers=clinic, json={
        "study": theirs, "targets": [{"type": "user", "id": "patient-7", "clinic": "A"}]}).status_code == 201
    patient = auth.headers("A", "patient-7", ["patient"])
    listed = client.get("/dicom-web/studies", headers=patient).get_json()
    assert [s["0020000D"]["Value"][0] for s in listed] == [theirs]  # not the rest of their clinic's
    assert client.get(f"/dicom-web/studies/{not_theirs}/metadata", headers=patient).status_code == 404
    assert client.get(f"/dicom-web/studies/{theirs}/metadata", headers=patient).status_code == 200
    assert client.post("/dicom-web/studies", headers=patient, data=b"x").status_code == 403


def test_reads_are_recorded_once_per_window_refusals_always(app, client, auth):
    headers = auth.headers("A", "dr.a", ["doctor"])
    study = generate_uid()
    stow(client, headers, dicom_instance(study, size=8))
    for _ in range(3):
        assert client.get(f"/dicom-web/studies/{study}/metadata", headers=headers).status_code == 200
        assert client.delete(f"/dicom-web/studies/{study}", headers=auth.headers("A", "s", ["staff"])).status_code == 403
    records = app.extensions["gateway"].audit.search(AuditQuery(resource=f"study:{study}"))
    actions = [(r.action, r.outcome) for r in reversed(records)]
    assert actions.count(("read", "ok")) == 1
    assert actions.count(("delete", "denied")) == 3
    assert actions.count(("store", "ok")) == 1


@pytest.mark.s3
def test_download_url_of_an_instance_on_s3_is_presigned(tmp_path, moto_server, s3_bucket):
    """With the S3 blob store, a download URL is an S3 presigned GET of the stored object."""
    import requests

    from gateway.app import create_app

    settings = load_settings(overrides={"storage.data_dir": str(tmp_path / "data"), "log.level": "warning",
                                        "storage.fsync": False, **moto_server.settings(s3_bucket)}, environ={})
    app = create_app(settings)
    try:
        from tests.conftest import AuthActions

        client, auth = app.test_client(), AuthActions(app)
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        data = dicom_instance(study, series, sop, size=8)
        stow(client, auth.headers("A", "dr.a", ["doctor"]), data)
        made = client.post("/api/v1/signed-urls", headers=auth.headers("A", "dr.a", ["staff"]),
                           json={"study": study, "series": series, "instance": sop, "ttl": 60})
        assert made.status_code == 201, made.get_json()
        body = made.get_json()
        assert body["kind"] == "s3" and "X-Amz-Signature=" in body["url"] and "X-Amz-Expires=60" in body["url"]
        fetched = requests.get(body["url"], timeout=30)
        assert fetched.status_code == 200 and fetched.content == data
        assert client.post("/api/v1/signed-urls", headers=auth.headers("B", "dr.b", ["doctor"]),
                           json={"study": study, "series": series, "instance": sop}).status_code == 404
    finally:
        app.extensions["gateway"].close()
