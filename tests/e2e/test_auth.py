"""Identity, clinic isolation, roles, shares and audit, against a real gateway (HTTP and DIMSE).

- The matrix: every role × every action × a study that is the principal's own, another
  clinic's, shared with its clinic, shared but expired, shared but revoked (and shared for
  viewing only), through DICOMweb; and the same studies through DIMSE (a peer bound to the
  clinic): each with the exact outcome.
- Token attacks: forged signatures, alg none, HMAC with the public key, wrong issuer or
  audience, expired, not yet valid, unknown key id; and a token of clinic A with UIDs of
  clinic B in every position of every DICOMweb path.
- Link shares, signed URLs, and an OIDC provider (a JWKS served by the test) rotating its key
  while the gateway runs.
- The audit log has a record of each refusal above, found by its request id.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from auth.local import LocalIssuer, new_signing_key
from gateway.config import load_settings
from tests.conftest import ServerProcess
from tests.e2e.dimse_support import SCP_AE, DimseServer, nodelay
from tests.helpers import free_port, multipart_body, multipart_content_type
from tests.idp import AUDIENCE, TestIdP, hmac_token, tampered_token, unsigned_token
from tests.services import dicom_instance

pytestmark = pytest.mark.e2e

OWNER, ME = "A", "B"  # the studies' clinic, and the clinic of the principals under test
ROLES = ("doctor", "staff", "lab", "admin", "support", "patient")
ACTIONS = ("read", "write", "delete", "share", "admin")
SCENARIOS = ("own", "other", "shared", "expired", "revoked", "shared-view-only")
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# The expected outcome of each (action, role), per scenario, written out here rather than
# derived from auth.policy: "ok" is the action's success status, "hidden" a 404 (or, for a
# search, no match), "refused" a 403.
READERS, WRITERS, DELETERS, SHARERS, ADMINS = ({"doctor", "staff", "lab", "admin"}, {"doctor", "staff", "lab", "admin"},
                                               {"doctor", "admin"}, {"doctor", "admin"}, {"admin", "support"})


def expected(action: str, role: str, scenario: str) -> str:
    allowed = {"read": READERS, "write": WRITERS, "delete": DELETERS, "share": SHARERS, "admin": ADMINS}[action]
    if role not in allowed:  # the patient role is off by default: a patient token has no role at all
        return "refused"
    if action in ("write", "admin"):
        return "ok"  # a write lands in the principal's own clinic whatever the UID; admin is per clinic
    if action == "read":
        return "ok" if scenario in ("own", "shared", "shared-view-only") else "hidden"
    return "ok" if scenario == "own" else "hidden"  # delete and share: the own clinic's studies only


# --- the gateway under test ---------------------------------------------------------------------

class Gateway:
    """The server, tokens per (clinic, role), and every refusal sent (to find in the audit log)."""

    def __init__(self, server: DimseServer, dest_port: int):
        self.server = server
        self.dest_port = dest_port
        self._tokens: dict[tuple, str] = {}
        self.refusals: list[tuple[str, str]] = []  # (request id, what)
        self.received: list[str] = []  # SOP Instance UIDs the C-MOVE destination got
        self.lock = threading.Lock()

    def token(self, clinic: str, role: str, user: str | None = None) -> str:
        key = (clinic, role, user)
        if key not in self._tokens:
            self._tokens[key] = self.server.token_for(clinic, user or f"{role}@{clinic}", [role])
        return self._tokens[key]

    def call(self, method: str, path: str, *, clinic: str = ME, role: str = "doctor", token: str | None = None,
             expect_refusal: bool = False, what: str = "", **kw) -> requests.Response:
        rid = uuid.uuid4().hex
        headers = {"X-Request-ID": rid, **kw.pop("headers", {})}
        if token is not False:
            headers["Authorization"] = f"Bearer {token or self.token(clinic, role)}"
        url = path if path.startswith("http") else self.server.url + path
        response = requests.request(method, url, headers=headers, timeout=60, **kw)
        if response.status_code in (401, 403, 404) and expect_refusal:
            self.refusals.append((rid, what or f"{method} {path}"))
        return response

    def stow(self, instances: list[bytes], *, clinic: str = OWNER, role: str = "doctor", study: str | None = None,
             **kw) -> requests.Response:
        return self.call("POST", "/dicom-web/studies" + (f"/{study}" if study else ""), clinic=clinic, role=role,
                         data=multipart_body(instances, "auth-e2e"),
                         headers={"Content-Type": multipart_content_type("auth-e2e")}, **kw)

    def share(self, study: str, *, clinic: str = OWNER, targets=None, **body) -> dict:
        response = self.call("POST", "/api/v1/shares", clinic=clinic, json={
            "study": study, "targets": targets or [{"type": "clinic", "id": ME}], **body})
        assert response.status_code == 201, response.text
        return response.json()["shares"][0]

    def database(self):
        """The server's index database, opened beside it (SQLite: the embedded default)."""
        from storage.index.sqlite import SqliteIndexStore

        return SqliteIndexStore(self.server.data_dir / "index.sqlite3", synchronous="NORMAL")


@dataclass
class Study:
    uid: str
    series: str
    sop: str
    owner: str
    data: bytes = field(repr=False)
    share_id: str | None = None

    @property
    def instance_path(self) -> str:
        return f"/dicom-web/studies/{self.uid}/series/{self.series}/instances/{self.sop}"


def make_study(gw: Gateway, scenario: str) -> Study:
    """A one-instance study in the state ``scenario`` describes, seen from clinic ME."""
    owner = ME if scenario == "own" else OWNER
    uid, series, sop = generate_uid(), generate_uid(), generate_uid()
    data = dicom_instance(uid, series, sop, size=16, patient=f"Auth^{scenario}")
    assert gw.stow([data], clinic=owner).status_code == 200
    study = Study(uid, series, sop, owner, data)
    if scenario in ("shared", "revoked"):
        study.share_id = gw.share(uid, permissions=["view", "download"], ttl=3600)["id"]
    elif scenario == "shared-view-only":
        study.share_id = gw.share(uid, permissions=["view"], ttl=3600)["id"]
    elif scenario == "expired":
        # Shares cannot be made with a past expiry: this one was made a day ago for an hour.
        from storage.records import ShareRecord

        now = int(time.time() * 1000)
        database = gw.database()
        try:
            database.shares.add_share(ShareRecord(id=uuid.uuid4().hex, clinic_id=OWNER, study_uid=uid, series_uid=None,
                                        target_type="clinic", target_id=ME, permissions=("view", "download"),
                                        created_by=f"doctor@{OWNER}", created_at=now - 86_400_000,
                                        expires_at=now - 82_800_000))
        finally:
            database.close()
    if scenario == "revoked":
        assert gw.call("DELETE", f"/api/v1/shares/{study.share_id}", clinic=OWNER).status_code == 204
    return study


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    dest_port = free_port()
    peers = [{"ae_title": "PEER_B", "clinic": ME}, {"ae_title": "PEER_A", "clinic": OWNER}]
    destinations = [{"ae_title": "AUTHDEST", "host": "127.0.0.1", "port": dest_port}]
    server = DimseServer(tmp_path_factory.mktemp("auth") / "data", peers=peers, destinations=destinations,
                         env={"GATEWAY_AUTH__OPERATOR_CLINICS": "ops", "GATEWAY_LOG__LEVEL": "warning"})
    gateway = Gateway(server.start(), dest_port)

    def on_store(event):
        with gateway.lock:
            gateway.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="AUTHDEST")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    scp = ae.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield gateway
    finally:
        scp.shutdown()
        server.stop()


@pytest.fixture(scope="module")
def studies(gw) -> dict[str, Study]:
    """One study per scenario, shared by the read and admin cases (which change nothing)."""
    return {scenario: make_study(gw, scenario) for scenario in SCENARIOS}


# --- the matrix through DICOMweb -------------------------------------------------------------------

def _read(gw: Gateway, study: Study, role: str, outcome: str, *, view_only: bool) -> None:
    found = gw.call("GET", "/dicom-web/studies", role=role, params={"StudyInstanceUID": study.uid},
                    expect_refusal=True, what=f"QIDO as {role}")
    if outcome == "refused":
        assert found.status_code == 403, found.text
    else:
        assert found.status_code == 200, found.text
        assert len(found.json()) == (1 if outcome == "ok" else 0)
    status = {"refused": 403, "hidden": 404, "ok": 200}[outcome]
    for suffix, accept, needs_download in (
            ("/metadata", "application/dicom+json", False),
            ("/frames/1", 'multipart/related; type="application/octet-stream"', False),
            ("/rendered", "image/jpeg", False), ("/thumbnail", "image/jpeg", False), ("", DICOM_ANY, True)):
        path = study.instance_path + suffix
        response = gw.call("GET", path, role=role, headers={"Accept": accept}, expect_refusal=True,
                           what=f"read {suffix or 'instance'} as {role}")
        # A share for viewing only does not give the original instances.
        want = 404 if status == 200 and needs_download and view_only else status
        assert response.status_code == want, (path, response.status_code, response.text[:300])
    for path in (f"/dicom-web/studies/{study.uid}/metadata", f"/dicom-web/studies/{study.uid}/thumbnail"):
        response = gw.call("GET", path, role=role, headers={"Accept": "*/*"}, expect_refusal=True)
        assert response.status_code == status, (path, response.text[:300])


def _count(gw: Gateway, clinic: str, study: str) -> int:
    """NumberOfStudyRelatedInstances of the study ``clinic`` sees under this UID (0: none)."""
    rows = gw.call("GET", "/dicom-web/studies", clinic=clinic, role="admin", params={"StudyInstanceUID": study}).json()
    return rows[0]["00201208"]["Value"][0] if rows else 0


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS)
def test_dicomweb_matrix(gw, studies, action, role, scenario):
    outcome = expected(action, role, scenario)
    if action == "read":
        _read(gw, studies[scenario], role, outcome, view_only=scenario == "shared-view-only")
    elif action == "admin":
        response = gw.call("GET", "/api/v1/audit", role=role, params={"resource": f"study:{studies[scenario].uid}"},
                           expect_refusal=True, what=f"audit as {role}")
        assert response.status_code == (200 if outcome == "ok" else 403), response.text
        if outcome == "ok":  # clinic B's admin sees B's records only: never clinic A's store of A's study
            assert all(ME in (r["clinic_id"], r["resource_clinic"]) for r in response.json()["records"])
    elif action == "write":
        study = make_study(gw, scenario)
        sop = generate_uid()
        data = dicom_instance(study.uid, generate_uid(), sop, size=16, seed=1)
        response = gw.stow([data], clinic=ME, role=role, study=study.uid, expect_refusal=True,
                           what=f"STOW as {role}")
        if outcome == "refused":
            assert response.status_code == 403, response.text
            assert _count(gw, study.owner, study.uid) == 1
            return
        assert response.status_code == 200, response.text
        # Stored into the principal's own clinic; another clinic's study of that UID is untouched.
        assert _count(gw, OWNER, study.uid) == (1 if study.owner == OWNER else 0)
        assert _count(gw, ME, study.uid) == (2 if study.owner == ME else 1)
    elif action == "delete":
        study = make_study(gw, scenario)
        response = gw.call("DELETE", f"/dicom-web/studies/{study.uid}", role=role, expect_refusal=True,
                           what=f"DELETE as {role}")
        assert response.status_code == {"ok": 204, "hidden": 404, "refused": 403}[outcome], response.text
        assert _count(gw, study.owner, study.uid) == (0 if outcome == "ok" else 1)
    elif action == "share":
        study = make_study(gw, scenario)
        response = gw.call("POST", "/api/v1/shares", role=role, expect_refusal=True, what=f"share as {role}",
                           json={"study": study.uid, "targets": [{"type": "clinic", "id": "C"}]})
        assert response.status_code == {"ok": 201, "hidden": 404, "refused": 403}[outcome], response.text
        if outcome == "ok":
            assert response.json()["shares"][0]["clinic"] == ME


def test_shared_studies_are_listed_for_the_target_and_no_one_else(gw, studies):
    listed = gw.call("GET", "/dicom-web/studies", clinic=ME, role="staff", params={"PatientName": "Auth^*"}).json()
    uids = {r["0020000D"]["Value"][0] for r in listed}
    assert {studies[s].uid for s in ("own", "shared", "shared-view-only")} <= uids
    assert not uids & {studies[s].uid for s in ("other", "expired", "revoked")}
    third = gw.call("GET", "/dicom-web/studies", clinic="C", role="doctor", params={"PatientName": "Auth^*"}).json()
    assert not {r["0020000D"]["Value"][0] for r in third} & {s.uid for s in studies.values()}


# --- the matrix through DIMSE ----------------------------------------------------------------------

def _dimse_ae() -> AE:
    ae = AE(ae_title="PEER_B")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
                    StudyRootQueryRetrieveInformationModelMove):
        ae.add_requested_context(context)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


def _query(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    ds.PatientName = ""
    return ds


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dimse_matrix(gw, studies, scenario, tmp_path):
    """A peer bound to clinic B: C-FIND sees B's studies and those shared with B; C-GET and
    C-MOVE send them when the share allows download; C-STORE stores into B whatever the UID."""
    study = studies[scenario]
    visible = scenario in ("own", "shared", "shared-view-only")
    downloadable = scenario in ("own", "shared")
    received: list[str] = []

    def on_get_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = _dimse_ae()
    assoc = ae.associate("127.0.0.1", gw.server.dimse_port, ae_title=SCP_AE,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_C_STORE, on_get_store)])
    assert assoc.is_established
    try:
        found = list(assoc.send_c_find(_query(study.uid), StudyRootQueryRetrieveInformationModelFind))
        matches = [ident for status, ident in found if status.Status in (0xFF00, 0xFF01)]
        assert found[-1][0].Status == 0x0000
        assert len(matches) == (1 if visible else 0)

        got = list(assoc.send_c_get(_query(study.uid), StudyRootQueryRetrieveInformationModelGet))
        final = got[-1][0]
        assert final.Status == 0x0000
        assert received == ([study.sop] if downloadable else [])
        assert final.get("NumberOfCompletedSuboperations", 0) == (1 if downloadable else 0)

        before = len(gw.received)
        moved = list(assoc.send_c_move(_query(study.uid), "AUTHDEST", StudyRootQueryRetrieveInformationModelMove))
        assert moved[-1][0].Status == 0x0000
        assert gw.received[before:] == ([study.sop] if downloadable else [])

    finally:
        assoc.release()
    # C-STORE of an instance with this study's UID: into clinic B, as a study of B's own.
    sop = generate_uid()
    path = tmp_path / "store.dcm"
    path.write_bytes(dicom_instance(study.uid, generate_uid(), sop, size=16, seed=2))
    assoc = _dimse_ae().associate("127.0.0.1", gw.server.dimse_port, ae_title=SCP_AE,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    if study.owner == OWNER:
        assert _count(gw, OWNER, study.uid) == 1
    rows = gw.call("GET", f"/dicom-web/studies/{study.uid}/instances", clinic=ME, role="admin",
                   params={"SOPInstanceUID": sop}).json()
    assert [r["00080018"]["Value"][0] for r in rows] == [sop]


# --- token attacks --------------------------------------------------------------------------------

def _claims(issuer: LocalIssuer, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": issuer.issuer, "aud": issuer.audience, "sub": "mallory", "clinicId": ME, "roles": ["admin"],
              "iat": now, "nbf": now, "exp": now + 600}
    claims.update(changes)
    return claims


@pytest.mark.parametrize("attack", ["missing", "not-bearer", "garbage", "forged-claims", "other-key-same-kid",
                                    "alg-none", "hs256-with-public-key", "unknown-kid", "wrong-issuer",
                                    "wrong-audience", "expired", "not-yet-valid", "no-clinic"])
def test_token_attacks_are_401(gw, studies, attack):
    issuer = LocalIssuer.from_settings(load_settings(environ=gw.server.env))
    key = issuer.keys.signing_key()
    attacker = new_signing_key("ES256")
    now = int(time.time())

    def signed(**changes):
        return jwt.encode(_claims(issuer, **changes), key.private_key, algorithm=key.alg, headers={"kid": key.kid})

    header = {
        "missing": None,
        "not-bearer": "Basic dXNlcjpwYXNz",
        "garbage": "Bearer abc.def",
        "forged-claims": "Bearer " + tampered_token(gw.token(ME, "staff"), roles=["admin"], clinicId=OWNER),
        "other-key-same-kid": "Bearer " + jwt.encode(_claims(issuer), attacker.private_key, algorithm="ES256",
                                                     headers={"kid": key.kid}),
        "alg-none": "Bearer " + unsigned_token(_claims(issuer), key.kid),
        "hs256-with-public-key": "Bearer " + hmac_token(
            _claims(issuer), key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), key.kid),
        "unknown-kid": "Bearer " + jwt.encode(_claims(issuer), attacker.private_key, algorithm="ES256",
                                              headers={"kid": attacker.kid}),
        "wrong-issuer": "Bearer " + signed(iss="https://evil.example"),
        "wrong-audience": "Bearer " + signed(aud="another-service"),
        "expired": "Bearer " + signed(iat=now - 7200, nbf=now - 7200, exp=now - 3600),
        "not-yet-valid": "Bearer " + signed(nbf=now + 3600, exp=now + 7200),
        "no-clinic": "Bearer " + signed(clinicId=""),
    }[attack]
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{studies['own'].uid}/metadata", "/api/v1/shares",
                 "/api/v1/audit", "/api/v1/admin/forwards"):
        response = gw.call("GET", path, token=False, headers={"Authorization": header} if header else {},
                           expect_refusal=True, what=f"attack {attack}")
        assert response.status_code == 401, (attack, path, response.text)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="dental-pacs-gateway"')
        assert ('error="invalid_token"' in challenge or 'error="invalid_request"' in challenge) == (header is not None)
        assert response.json()["code"] == 401
        assert "mallory" not in response.text and key.kid not in response.text


def test_probes_and_docs_need_no_token(gw):
    assert requests.get(gw.server.url + "/healthz", timeout=10).status_code == 200
    assert requests.get(gw.server.url + "/readyz", timeout=10).status_code == 200
    assert requests.get(gw.server.url + "/api/openapi.json", timeout=10).status_code == 200
    preflight = requests.options(gw.server.dicomweb + "/studies", timeout=10, headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204 and "authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = requests.get(gw.server.dicomweb + "/studies", headers={"Origin": "http://viewer.example"}, timeout=10)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]


def _positions(a: Study, b: Study) -> list[tuple[str, str, str]]:
    """(study, series, sop) with clinic B's UIDs in each position (the others clinic A's), and in all."""
    return [(b.uid, a.series, a.sop), (a.uid, b.series, a.sop), (a.uid, a.series, b.sop), (b.uid, b.series, b.sop)]


PATHS = ["/studies/{s}", "/studies/{s}/series/{se}", "/studies/{s}/series/{se}/instances/{i}",
         "/studies/{s}/metadata", "/studies/{s}/series/{se}/metadata", "/studies/{s}/series/{se}/instances/{i}/metadata",
         "/studies/{s}/series/{se}/instances/{i}/frames/1", "/studies/{s}/series/{se}/instances/{i}/rendered",
         "/studies/{s}/series/{se}/instances/{i}/frames/1/rendered", "/studies/{s}/thumbnail",
         "/studies/{s}/series/{se}/thumbnail", "/studies/{s}/series/{se}/instances/{i}/thumbnail",
         "/studies/{s}/series/{se}/instances/{i}/frames/1/thumbnail", "/studies/{s}/series/{se}/instances/{i}/bulk/7FE00010"]
DELETES = ["/studies/{s}", "/studies/{s}/series/{se}", "/studies/{s}/series/{se}/instances/{i}"]
SEARCHES = ["/studies/{s}/series", "/studies/{s}/instances", "/studies/{s}/series/{se}/instances"]


def test_a_token_of_clinic_a_with_uids_of_clinic_b_in_every_path_position(gw):
    """Clinic A's doctor asks for clinic B's study, series and instance UIDs in every position
    of every path: 404 everywhere (never 403: existence is not leaked), empty searches."""
    mine = make_study(gw, "other")  # A's
    theirs = make_study(gw, "own")  # B's
    attribute = {"s": "uid", "se": "series", "i": "sop"}
    for kind, templates in (("read", PATHS), ("delete", DELETES), ("search", SEARCHES)):
        for template in templates:
            used = [k for k in attribute if "{" + k + "}" in template]
            for values in _positions(mine, theirs):
                uids = dict(zip(attribute, values))
                if all(uids[k] == getattr(mine, attribute[k]) for k in used):
                    continue  # only clinic A's own UIDs in the positions this path has
                path = "/dicom-web" + template.format(**uids)
                if kind == "search":
                    response = gw.call("GET", path, clinic=OWNER, headers={"Accept": "application/dicom+json"})
                    assert response.status_code == 200, path
                    found = {r[tag]["Value"][0] for r in response.json() for tag in ("0020000E", "00080018")
                             if tag in r}
                    assert not found & {theirs.series, theirs.sop}, path
                    continue
                accept = "image/jpeg" if path.endswith(("rendered", "thumbnail")) else "*/*"
                response = gw.call("DELETE" if kind == "delete" else "GET", path, clinic=OWNER,
                                   headers={"Accept": accept}, expect_refusal=True, what=f"{kind} {path}")
                assert response.status_code == 404, (path, response.status_code, response.text[:200])
                assert "held by" not in response.text and ME not in response.json()["message"].split()
    # STOW into clinic B's study UID: stored into clinic A, B's study unchanged.
    data = dicom_instance(theirs.uid, generate_uid(), generate_uid(), size=16, seed=3)
    assert gw.stow([data], clinic=OWNER, study=theirs.uid).status_code == 200
    assert _count(gw, ME, theirs.uid) == 1 and _count(gw, OWNER, theirs.uid) == 1
    # Nothing of B's was changed by A's attempts.
    assert gw.call("GET", theirs.instance_path, clinic=ME, headers={"Accept": DICOM_ANY}).status_code == 200


# --- link shares and signed URLs ---------------------------------------------------------------

def test_link_share(gw):
    study, other = make_study(gw, "other"), make_study(gw, "other")
    link = gw.share(study.uid, targets=[{"type": "link"}], permissions=["view"], ttl=600)
    token = link["token"]
    assert token.startswith("gwl_") and link["target"] == {"type": "link"}
    listed = gw.call("GET", "/dicom-web/studies", token=token).json()
    assert [r["0020000D"]["Value"][0] for r in listed] == [study.uid]  # that share, nothing else
    assert gw.call("GET", f"/dicom-web/studies/{study.uid}/metadata", token=token).status_code == 200
    assert gw.call("GET", f"/dicom-web/studies/{study.uid}/thumbnail", token=False,
                   params={"share": token}).status_code == 200  # a plain link, no header
    assert gw.call("GET", study.instance_path, token=token, headers={"Accept": DICOM_ANY},
                   expect_refusal=True).status_code == 404  # view only
    assert gw.call("GET", f"/dicom-web/studies/{other.uid}/metadata", token=token,
                   expect_refusal=True).status_code == 404
    for method, path in (("POST", "/api/v1/shares"), ("DELETE", f"/dicom-web/studies/{study.uid}"),
                         ("GET", "/api/v1/audit")):
        assert gw.call(method, path, token=token, expect_refusal=True, json={}).status_code == 403
    assert gw.stow([dicom_instance(generate_uid(), size=16)], token=token, expect_refusal=True).status_code == 403
    # The owner lists it (no token in the list) and revokes it: the next request is refused.
    shares = gw.call("GET", "/api/v1/shares", clinic=OWNER, params={"study": study.uid}).json()["shares"]
    assert [s["id"] for s in shares] == [link["id"]] and "token" not in shares[0]
    assert gw.call("DELETE", f"/api/v1/shares/{link['id']}", clinic=OWNER).status_code == 204
    revoked = gw.call("GET", f"/dicom-web/studies/{study.uid}/metadata", token=token, expect_refusal=True)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    assert gw.call("GET", "/dicom-web/studies", token="gwl_" + "x" * 43, expect_refusal=True).status_code == 401


def test_user_share_and_incoming_list(gw):
    study = make_study(gw, "other")
    gw.share(study.uid, targets=[{"type": "user", "id": "dr.lee", "clinic": ME}], permissions=["view", "download"])
    lee = gw.token(ME, "doctor", user="dr.lee")
    assert gw.call("GET", study.instance_path, token=lee, headers={"Accept": DICOM_ANY}).status_code == 200
    incoming = gw.call("GET", "/api/v1/shares", token=lee, params={"direction": "incoming"}).json()["shares"]
    assert study.uid in {s["study"] for s in incoming}
    colleague = gw.token(ME, "doctor", user="dr.park")  # same clinic, not the target
    assert gw.call("GET", study.instance_path, token=colleague, headers={"Accept": DICOM_ANY},
                   expect_refusal=True).status_code == 404
    elsewhere = gw.token("C", "doctor", user="dr.lee")  # the same user name acting for another clinic
    assert gw.call("GET", study.instance_path, token=elsewhere, headers={"Accept": DICOM_ANY},
                   expect_refusal=True).status_code == 404


@pytest.mark.parametrize("body, status", [
    ({"targets": [{"type": "clinic", "id": ME}]}, 400),  # no study
    ({"study": "1.2.3", "targets": []}, 400),
    ({"study": "1.2.3", "targets": [{"type": "group", "id": "x"}]}, 400),
    ({"study": "1.2.3", "targets": [{"type": "link"}], "permissions": ["edit"]}, 400),
    ({"study": "1.2.3", "targets": [{"type": "link"}], "ttl": -5}, 400),
    ({"study": "1.2.3", "targets": [{"type": "link"}], "expires_at": "2001-01-01T00:00:00Z"}, 400),
    ({"study": "1.2.3", "targets": [{"type": "link"}], "ttl": 10**9}, 400),
    ({"study": "1.2.3", "targets": [{"type": "link"}]}, 404),  # not a study of the clinic
])
def test_bad_share_requests(gw, body, status):
    response = gw.call("POST", "/api/v1/shares", clinic=ME, json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == status


def test_signed_urls(gw):
    study = make_study(gw, "shared")
    made = gw.call("POST", "/api/v1/signed-urls", clinic=ME, role="staff",
                   json={"path": f"/dicom-web/studies/{study.uid}/thumbnail", "params": {"viewport": "32,32"},
                         "ttl": 120})
    assert made.status_code == 201, made.text
    url = made.json()["url"]
    assert made.json()["kind"] == "gateway" and "gw_sig=" in url
    assert requests.get(url, timeout=30).status_code == 200  # no Authorization header
    for bad in (url.replace("viewport=32%2C32", "viewport=64%2C64"), url.replace("gw_clinic=B", "gw_clinic=A"),
                url.replace("/thumbnail", "/metadata"), url[:-3] + "AAA"):
        response = gw.call("GET", bad, token=False, expect_refusal=True, what="tampered signed URL")
        assert response.status_code == 401, bad
    assert gw.call("DELETE", url, token=False, expect_refusal=True).status_code == 401  # bound to GET
    # Every access is checked again: once the share is revoked, the URL answers 404.
    assert gw.call("DELETE", f"/api/v1/shares/{study.share_id}", clinic=OWNER).status_code == 204
    assert gw.call("GET", url, token=False, expect_refusal=True).status_code == 404
    # A direct download URL of an instance (filesystem blobs: a signed gateway URL).
    own = make_study(gw, "own")
    made = gw.call("POST", "/api/v1/signed-urls", clinic=ME,
                   json={"study": own.uid, "series": own.series, "instance": own.sop})
    assert made.status_code == 201 and made.json()["kind"] == "gateway"
    download = requests.get(made.json()["url"], headers={"Accept": DICOM_ANY}, timeout=30)
    assert download.status_code == 200 and own.data in download.content
    assert gw.call("POST", "/api/v1/signed-urls", clinic=ME, json={"path": "/api/v1/audit"}).status_code == 400


# --- the audit log ----------------------------------------------------------------------------------

def _operator_records(gw: Gateway) -> list[dict]:
    response = gw.call("GET", "/api/v1/audit", clinic="ops", role="admin", params={"format": "jsonl"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_audit_filters_and_clinic_scope(gw, studies):
    study = studies["shared"]
    gw.call("GET", f"/dicom-web/studies/{study.uid}/metadata", clinic=ME, role="lab")
    mine = gw.call("GET", "/api/v1/audit", clinic=OWNER, role="admin",
                   params={"resource": f"study:{study.uid}", "action": "read"}).json()["records"]
    assert any(r["clinic_id"] == ME and r["resource_clinic"] == OWNER and "via share" in r["detail"] for r in mine)
    assert gw.call("GET", "/api/v1/audit", clinic=OWNER, role="admin", params={"clinic": ME}).status_code == 404
    assert gw.call("GET", "/api/v1/audit", clinic=OWNER, role="admin", params={"since": "yesterday"}).status_code == 400
    assert gw.call("GET", "/api/v1/audit", clinic=OWNER, role="admin", params={"bogus": "1"}).status_code == 400
    support = gw.call("GET", "/api/v1/audit", clinic=OWNER, role="support", params={"outcome": "denied"}).json()
    assert all(r["outcome"] == "denied" and OWNER in (r["clinic_id"], r["resource_clinic"])
               for r in support["records"])
    operator = gw.call("GET", "/api/v1/audit", clinic="ops", role="admin",
                       params={"clinic": ME, "limit": 5}).json()["records"]
    assert 0 < len(operator) <= 5 and all(ME in (r["clinic_id"], r["resource_clinic"]) for r in operator)


def test_every_refusal_is_audited(gw):
    """Each 401/403/404 sent by the tests above left a record with its request id."""
    by_request = {}
    for record in _operator_records(gw):
        by_request.setdefault(record["request_id"], []).append(record)
    assert gw.refusals, "run with the rest of the module"
    missing = [(rid, what) for rid, what in gw.refusals
               if not any(r["outcome"] in ("denied", "not_found") for r in by_request.get(rid, []))]
    assert not missing, f"{len(missing)} of {len(gw.refusals)} refusals without an audit record: {missing[:5]}"
    logins = [r for records in by_request.values() for r in records if r["action"] == "login"]
    assert logins and all(r["outcome"] == "denied" and r["client"] == "127.0.0.1" for r in logins)
    cross = [r for records in by_request.values() for r in records
             if r["outcome"] == "denied" and r["resource_clinic"] and r["resource_clinic"] != r["clinic_id"]]
    assert cross and all("not shared" in r["detail"] for r in cross)


def test_dimse_refusals_and_stores_are_audited(gw, studies):
    records = _operator_records(gw)
    dimse = [r for r in records if r["door"] == "dimse" and r["user_id"] == "dimse:PEER_B"]
    denied = {r["resource"] for r in dimse if r["outcome"] == "denied"}
    for scenario in ("other", "expired", "revoked"):  # C-GET/C-MOVE of a study B may not download
        assert f"study:{studies[scenario].uid}" in denied, scenario
    assert any(r["action"] == "store" and r["outcome"] == "ok" and r["client"].startswith("PEER_B@") for r in dimse)
    assert all(r["request_id"].startswith("dimse-") for r in dimse)


def test_unknown_peer_is_audited(gw):
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", gw.server.dimse_port, ae_title=SCP_AE)
    assert assoc.is_rejected
    records = [r for r in _operator_records(gw) if r["action"] == "login" and r["door"] == "dimse"]
    assert any(r["client"].startswith("INTRUDER@") and r["outcome"] == "denied" for r in records)


# --- OIDC: a gateway process against a JWKS served by the test, rotating its key ----------------

def test_oidc_gateway_with_key_rotation(tmp_path):
    with TestIdP("RS256") as idp:
        server = ServerProcess(tmp_path / "data", env={
            "GATEWAY_AUTH__PROVIDER": "oidc", "GATEWAY_AUTH__OIDC_ISSUER": idp.issuer,
            "GATEWAY_AUTH__OIDC_AUDIENCE": AUDIENCE, "GATEWAY_AUTH__OIDC_CLIENT_ID": AUDIENCE,
            "GATEWAY_AUTH__OIDC_JWKS_MIN_REFRESH": "0", "GATEWAY_SERVER__WORKERS": "1"})
        server.start()
        try:
            def get(token: str, path: str = "/dicom-web/studies"):
                return requests.get(server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)

            first = idp.keys[0]
            doctor = idp.token(sub="dr.kim", clinic="A", roles=["dentist"])
            study = generate_uid()
            body = dicom_instance(study, size=16)
            stored = requests.post(server.dicomweb + "/studies", data=body, timeout=30, headers={
                "Authorization": f"Bearer {doctor}", "Content-Type": "application/dicom"})
            assert stored.status_code == 200, stored.text
            assert len(get(doctor).json()) == 1
            assert get(idp.token(clinic="B", roles=["doctor"]), f"/dicom-web/studies/{study}/metadata").status_code == 404
            assert get(idp.token(roles=["offline_access"])).status_code == 403  # a user without a gateway role
            assert get(idp.token(roles=[], client_roles=["staff"])).status_code == 200  # resource_access roles

            second = idp.rotate("RS256")  # Keycloak rotates: new kid, the old key leaves the JWKS
            assert get(idp.token(key=second, clinic="A")).status_code == 200  # unknown kid: JWKS fetched again
            old = get(idp.token(key=first, clinic="A"))
            assert old.status_code == 401 and "unknown key id" in old.json()["message"]
            for attack in (unsigned_token(idp.claims(), second.kid),
                           hmac_token(idp.claims(), second.public_pem(), second.kid),
                           idp.sign(idp.claims(aud="account"), second),
                           idp.sign(idp.claims(iss=idp.url + "/realms/other"), second)):
                assert get(attack).status_code == 401
            assert idp.jwks_requests >= 2
        finally:
            server.stop()
