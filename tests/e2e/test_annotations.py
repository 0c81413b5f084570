"""Users, projects and annotations against a real ``gateway serve``, over HTTP: the user row
made from the token's claims, projects, annotations with their filters, roles, and another
clinic's objects answering 404 on every endpoint, audited."""
from __future__ import annotations

import uuid

import pytest

from auth.local import LocalIssuer
from gateway.config import load_settings
from tests.e2e.annotation_support import png, put_signed, sha256, store_series

pytestmark = pytest.mark.e2e


def claims_token(server, *, clinic: str, user: str, roles=("doctor",), **claims) -> str:
    settings = load_settings(environ={k: v for k, v in server.env.items() if k != "GATEWAY_CONFIG"})
    return LocalIssuer.from_settings(settings).issue(user=user, clinic=clinic, roles=list(roles), ttl=600,
                                                     extra=claims)


@pytest.fixture(scope="module")
def clinic(server):
    """A clinic of its own with a stored series of 3 slices, and sessions of its roles."""
    name = f"annot-{uuid.uuid4().hex[:8]}"
    doctor = server.session(server.token_for(name, "dr.kim", ("doctor",)))
    study, series, sops = store_series(server.url, dict(doctor.headers), 3)

    class Clinic:
        pass

    c = Clinic()
    c.name, c.study, c.series, c.sops, c.doctor = name, study, series, sops, doctor
    c.staff = server.session(server.token_for(name, "staff.lee", ("staff",)))
    c.support = server.session(server.token_for(name, "it.park", ("support",)))
    c.admin = server.session(server.token_for(name, "admin.choi", ("admin",)))
    return c


def test_me_is_made_from_the_token_claims_and_follows_them(server):
    clinic = f"me-{uuid.uuid4().hex[:8]}"
    first = server.session(claims_token(server, clinic=clinic, user="u-123", preferred_username="dr.kim",
                                        email="kim@smile.example", given_name="Minji", family_name="Kim",
                                        organization="Seoul Smile", department=["Orthodontics"]))
    me = first.get(f"{server.url}/api/v1/me", timeout=10)
    assert me.status_code == 200, me.text
    body = me.json()
    assert {k: body[k] for k in ("id", "clinic", "username", "email", "name", "organization", "department",
                                 "roles")} == {
        "id": "u-123", "clinic": clinic, "username": "dr.kim", "email": "kim@smile.example", "name": "Minji Kim",
        "organization": "Seoul Smile", "department": "Orthodontics", "roles": ["doctor"]}
    again = server.session(claims_token(server, clinic=clinic, user="u-123", roles=("doctor", "admin"),
                                        email="minji@smile.example", name="Dr. Minji Kim"))
    updated = again.get(f"{server.url}/api/v1/me", timeout=10).json()
    assert (updated["email"], updated["name"], updated["username"]) == ("minji@smile.example", "Dr. Minji Kim", None)
    assert updated["roles"] == ["admin", "doctor"] and updated["created_at"] == body["created_at"]


def test_me_refuses_share_links(server, clinic):
    created = clinic.doctor.post(f"{server.url}/api/v1/shares", json={"study": clinic.study,
                                                                     "targets": [{"type": "link"}]}, timeout=10)
    token = created.json()["shares"][0]["token"]
    response = server.session(token).get(f"{server.url}/api/v1/me", timeout=10)
    assert response.status_code == 403 and "link" in response.json()["message"]


def test_projects(server, clinic):
    api = f"{server.url}/api/v1/projects"
    created = clinic.doctor.post(api, json={"name": "Implant study", "description": "2025"}, timeout=10)
    assert created.status_code == 201, created.text
    project = created.json()
    assert (project["name"], project["clinic"], project["created_by"]) == ("Implant study", clinic.name, "dr.kim")
    taken = clinic.staff.post(api, json={"name": "Implant study"}, timeout=10)
    assert taken.status_code == 409 and "Implant study" in taken.json()["message"]
    bad = clinic.doctor.post(api, json={"name": "", "colour": "red"}, timeout=10)
    assert bad.status_code == 400 and {"name", "colour"} <= set(bad.json()["errors"]["fields"]["json"])
    renamed = clinic.staff.patch(f"{api}/{project['id']}", json={"name": "Implants"}, timeout=10)
    assert renamed.status_code == 200 and renamed.json()["name"] == "Implants"
    assert renamed.json()["description"] == "2025"
    assert clinic.staff.patch(f"{api}/{project['id']}", json={}, timeout=10).status_code == 400
    assert clinic.doctor.get(f"{api}/{project['id']}", timeout=10).json()["name"] == "Implants"
    assert "Implants" in [p["name"] for p in clinic.doctor.get(api, timeout=10).json()["projects"]]
    assert clinic.doctor.get(f"{api}/nope", timeout=10).status_code == 404
    assert clinic.support.get(api, timeout=10).status_code == 403  # no read action


def test_annotations_crud_and_filters(server, clinic):
    api = f"{server.url}/api/v1/annotations"
    project = clinic.doctor.post(f"{server.url}/api/v1/projects", json={"name": f"p-{uuid.uuid4().hex[:6]}"},
                                 timeout=10).json()
    body = {"study": clinic.study, "series": clinic.series, "instance": clinic.sops[1], "type": "measurement",
            "data": {"line": [[10, 12], [40, 52]], "label": "근관 길이"}, "measurements": {"length_mm": 21.5},
            "software": "viewer 3.2", "project": project["id"]}
    created = clinic.doctor.post(api, json=body, timeout=10)
    assert created.status_code == 201, created.text
    annotation = created.json()
    assert {k: annotation[k] for k in ("study", "series", "instance", "type", "data", "measurements", "software",
                                       "project", "user", "clinic")} == {
        **{k: body[k] for k in ("study", "series", "instance", "type", "data", "measurements", "software",
                                "project")}, "user": "dr.kim", "clinic": clinic.name}
    note = clinic.staff.post(api, json={"study": clinic.study, "type": "note", "data": {"text": "check 36"}},
                             timeout=10).json()
    ids = lambda **q: [a["id"] for a in clinic.doctor.get(api, params=q, timeout=10).json()["annotations"]]  # noqa: E731
    assert ids(study=clinic.study) == [note["id"], annotation["id"]]  # newest first
    assert ids(study=clinic.study, type="measurement") == [annotation["id"]]
    assert ids(study=clinic.study, user="staff.lee") == [note["id"]]
    assert ids(project=project["id"]) == [annotation["id"]]
    assert ids(series=clinic.series) == [annotation["id"]]
    assert clinic.doctor.get(api, params={"colour": "red"}, timeout=10).status_code == 400

    replaced = clinic.staff.put(f"{api}/{annotation['id']}", json={"type": "angle", "data": {"deg": 92}}, timeout=10)
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["type"], replaced.json()["data"], replaced.json()["measurements"],
            replaced.json()["project"], replaced.json()["study"]) == ("angle", {"deg": 92}, None, None, clinic.study)
    assert clinic.doctor.get(f"{api}/{annotation['id']}", timeout=10).json()["type"] == "angle"
    assert clinic.staff.put(f"{api}/{annotation['id']}", json={"type": "x", "project": "nope"},
                            timeout=10).status_code == 404
    assert clinic.staff.delete(f"{api}/{annotation['id']}", timeout=10).status_code == 403  # no delete action
    assert clinic.doctor.delete(f"{api}/{annotation['id']}", timeout=10).status_code == 204
    assert clinic.doctor.get(f"{api}/{annotation['id']}", timeout=10).status_code == 404
    assert clinic.doctor.delete(f"{api}/{annotation['id']}", timeout=10).status_code == 404


def test_an_annotation_needs_a_study_of_the_clinic(server, clinic):
    api = f"{server.url}/api/v1/annotations"
    for body, status in (({"study": "1.2.3.999", "type": "note"}, 404),
                         ({"study": clinic.study, "series": "1.2.3.999", "type": "note"}, 404),
                         ({"study": clinic.study, "series": clinic.series, "instance": "1.2.9", "type": "note"}, 404),
                         ({"study": clinic.study, "instance": clinic.sops[0], "type": "note"}, 400),
                         ({"study": clinic.study}, 400)):
        response = clinic.doctor.post(api, json=body, timeout=10)
        assert response.status_code == status, (body, response.text)
        assert response.json()["message"]


def test_another_clinic_gets_404_on_every_endpoint_and_it_is_audited(server, clinic):
    """Every endpoint of another clinic's project, annotation, mask group and mask answers 404,
    as for ones that do not exist, and each refusal is in the owner's audit log."""
    api = f"{server.url}/api/v1"
    project = clinic.doctor.post(f"{api}/projects", json={"name": f"x-{uuid.uuid4().hex[:6]}"}, timeout=10).json()
    annotation = clinic.doctor.post(f"{api}/annotations", json={"study": clinic.study, "series": clinic.series,
                                                                "type": "segmentation"}, timeout=10).json()
    groups = f"{api}/annotations/{annotation['id']}/mask-groups"
    group = clinic.doctor.post(groups, json={"name": "teeth"}, timeout=10).json()
    data = png(16, 16)  # the series' Columns x Rows
    signed = clinic.doctor.post(f"{groups}/{group['id']}/signed-url", json={
        "masks": [{"slice": 0, "label": "tooth", "size": len(data), "sha256": sha256(data)}]}, timeout=10).json()
    assert put_signed(signed["uploads"][0], data).status_code == 200
    mask = clinic.doctor.post(f"{groups}/{group['id']}/complete", timeout=10).json()["masks"][0]

    other = server.session(server.token_for(f"other-{uuid.uuid4().hex[:6]}", "dr.evil", ("admin",)))
    gid, mid, aid = group["id"], mask["id"], annotation["id"]
    item = [{"slice": 0, "label": "tooth", "size": len(data), "sha256": sha256(data)}]
    calls = [("get", f"{api}/projects/{project['id']}", None), ("patch", f"{api}/projects/{project['id']}",
                                                                 {"name": "mine"}),
             ("get", f"{api}/annotations/{aid}", None), ("put", f"{api}/annotations/{aid}", {"type": "x"}),
             ("delete", f"{api}/annotations/{aid}", None), ("get", groups, None), ("post", groups, {"name": "g"}),
             ("get", f"{groups}/{gid}", None), ("delete", f"{groups}/{gid}", None),
             ("post", f"{groups}/{gid}/signed-url", {"masks": item}), ("post", f"{groups}/{gid}/complete", {}),
             ("get", f"{groups}/{gid}/masks", None), ("get", f"{groups}/{gid}/masks/{mid}", None),
             ("get", f"{groups}/{gid}/masks/{mid}/content", None),
             ("post", f"{api}/annotations", {"study": clinic.study, "type": "note"})]
    for method, url, body in calls:
        response = other.request(method, url, json=body, timeout=10)
        assert response.status_code == 404, (method, url, response.status_code, response.text)
        assert clinic.name not in response.text
    assert other.get(f"{api}/annotations", timeout=10).json()["annotations"] == []
    assert other.get(f"{api}/projects", timeout=10).json()["projects"] == []
    # Nothing changed, and the owner's admin sees every refusal.
    assert clinic.doctor.get(f"{groups}/{gid}/masks/{mid}", timeout=10).status_code == 200
    assert clinic.doctor.get(f"{api}/projects/{project['id']}", timeout=10).json()["name"] == project["name"]
    records = clinic.admin.get(f"{api}/audit", params={"user": "dr.evil", "outcome": "denied", "limit": 100},
                               timeout=10).json()["records"]
    refused = {r["resource"] for r in records}
    assert {f"project:{project['id']}", f"annotation:{aid}", f"study:{clinic.study}"} <= refused, refused
    assert all(r["resource_clinic"] == clinic.name for r in records)
    assert len(records) >= len(calls)
