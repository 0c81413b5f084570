"""The gateway against a real OpenID Provider that nobody here wrote, end to end.

The session's provider (:func:`tests.e2e.conftest.openid_provider`) is panva's ``oidc-provider``
on Node, configured from ``deploy/keycloak/dental-realm.json`` (plus the tests' users and
clients) as its own process on loopback. The gateway runs with ``auth.provider = "oidc"``
pointed at the realm's issuer, as ``deploy/compose.yaml`` points it at Keycloak:

- discovery and JWKS are fetched by the gateway; tokens from the provider's token endpoint
  (client credentials, authorization code with PKCE through its login page) are accepted,
  scoped to their ``clinicId``, their realm and client roles mapped through the policy;
- tokens of another issuer (another realm with its own keys, and one signed with the same
  keys), of another audience and expired ones are refused with 401 and a JSON body saying why;
- the provider rotates its key mid-run: new-key tokens are accepted at once, old-key tokens
  while the old key stays published, and refused once it has left the JWKS;
- OHIF, with its own ``oidc`` configuration, logs in through the provider's login page in
  headless Chromium and opens a study stored in the gateway, which sees OHIF's bearer token.
"""
from __future__ import annotations

import time

import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import ServerProcess
from tests.e2e import ohif_harness as harness
from tests.e2e import openid_provider as op
from tests.helpers import multipart_body, multipart_content_type
from tests.services import dicom_instance

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

OHIF_USER, OHIF_PASSWORD = "dr.demo", "demo"  # the deploy realm's demo user, clinic "default"
JWKS_MAX_AGE = 2  # seconds: the gateway refetches the JWKS this often, so a retired key is refused soon
LEEWAY = 1


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, openid_provider, ohif_oidc_port):
    """A gateway whose only identity provider is the session's OpenID provider (realm dental)."""
    server = ServerProcess(tmp_path_factory.mktemp("oidc-gateway") / "data", env={
        "GATEWAY_AUTH__PROVIDER": "oidc",
        "GATEWAY_AUTH__OIDC_ISSUER": openid_provider.issuer("dental"),
        "GATEWAY_AUTH__OIDC_AUDIENCE": op.GATEWAY_AUDIENCE,
        "GATEWAY_AUTH__OIDC_CLIENT_ID": op.GATEWAY_AUDIENCE,
        "GATEWAY_AUTH__OIDC_USER_CLAIM": "preferred_username",
        "GATEWAY_AUTH__OIDC_ALGORITHMS": "RS256",
        "GATEWAY_AUTH__OIDC_JWKS_MIN_REFRESH": "0",
        "GATEWAY_AUTH__OIDC_JWKS_MAX_AGE": str(JWKS_MAX_AGE),
        "GATEWAY_AUTH__LEEWAY": str(LEEWAY),
        "GATEWAY_DICOMWEB__CORS_ORIGINS": f"http://127.0.0.1:{ohif_oidc_port}",
        "GATEWAY_SERVER__WORKERS": "1"})
    server.start()
    yield server
    server.stop()


def _secret(client_id: str) -> str:
    if client_id == op.IMPORTER:
        return op.client_of(op.deploy_realm(), op.IMPORTER)["secret"]
    return op.TEST_CLIENTS[client_id][0]


def service_token(provider, client_id: str = "importer-a", realm: str = "dental") -> str:
    return provider.client_credentials(client_id, _secret(client_id), realm=realm)["access_token"]


def user_token(provider, username: str, ohif_port: int, password: str = op.PASSWORD) -> str:
    return provider.login(username, password, client_id=op.OHIF_CLIENT,
                          redirect_uri=f"http://127.0.0.1:{ohif_port}/callback")["access_token"]


def call(gateway, token: str, method: str = "GET", path: str = "/dicom-web/studies", **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return requests.request(method, gateway.url + path, headers=headers, timeout=60, **kw)


def stow(gateway, token: str, *instances: bytes) -> requests.Response:
    return call(gateway, token, "POST", data=multipart_body(list(instances), "oidc-e2e"),
                headers={"Content-Type": multipart_content_type("oidc-e2e"), "Accept": "application/dicom+json"})


def refused(response: requests.Response, why: str) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    assert why in response.json()["message"], response.json()
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def new_study(patient: str) -> tuple[str, bytes]:
    study = generate_uid()
    return study, dicom_instance(study, generate_uid(), generate_uid(), size=16, patient=patient)


def found(gateway, token: str, study: str) -> int:
    response = call(gateway, token, params={"StudyInstanceUID": study})
    assert response.status_code == 200, response.text
    return len(response.json())


# --- discovery, JWKS, tokens of the token endpoint ---------------------------------------------

def test_the_gateway_fetches_discovery_and_jwks_and_accepts_a_service_token(gateway, openid_provider):
    meta = openid_provider.discovery()
    assert meta["issuer"] == openid_provider.issuer("dental")
    assert "RS256" in meta["id_token_signing_alg_values_supported"]
    assert "S256" in meta["code_challenge_methods_supported"]
    assert "client_credentials" in meta["grant_types_supported"]

    token = service_token(openid_provider)
    claims = op.claims_of(token)
    assert (claims["aud"], claims["clinicId"], claims["realm_access"]["roles"]) == (op.GATEWAY_AUDIENCE, "A", ["staff"])
    study, data = new_study("Oidc^Service")
    stored = stow(gateway, token, data)
    assert stored.status_code == 200, stored.text
    assert found(gateway, token, study) == 1

    served = [(r["method"], r["path"]) for r in openid_provider.requests_served()
              if r["userAgent"].startswith("Python-urllib")]  # the gateway's own fetches
    assert ("GET", "/realms/dental/.well-known/openid-configuration") in served
    jwks_path = "/" + meta["jwks_uri"].split("/", 3)[3]
    assert ("GET", jwks_path) in served


def test_a_clinic_sees_its_own_studies_only(gateway, openid_provider, ohif_oidc_port):
    study, data = new_study("Oidc^ClinicA")
    assert stow(gateway, service_token(openid_provider, "importer-a"), data).status_code == 200
    doctor_a = user_token(openid_provider, "dr.a", ohif_oidc_port)
    assert op.claims_of(doctor_a)["clinicId"] == "A"
    assert found(gateway, doctor_a, study) == 1
    staff_b = user_token(openid_provider, "staff.b", ohif_oidc_port)
    assert found(gateway, staff_b, study) == 0
    assert call(gateway, staff_b, path=f"/dicom-web/studies/{study}/metadata").status_code == 404
    assert found(gateway, service_token(openid_provider, op.IMPORTER), study) == 0  # clinic "default"


def test_roles_map_through_the_policy(gateway, openid_provider, ohif_oidc_port):
    study, data = new_study("Oidc^Roles")
    support = user_token(openid_provider, "support.a", ohif_oidc_port)
    refusal = stow(gateway, support, data)
    assert refusal.status_code == 403, refusal.text
    assert "write is not allowed for roles: support" in refusal.json()["message"]
    assert found(gateway, service_token(openid_provider, "importer-a"), study) == 0  # nothing stored
    assert call(gateway, support, path="/api/v1/audit").status_code == 200  # support administers

    # staff.b has no realm role, only the client role resource_access.pacs-gateway.roles: staff.
    staff_b = user_token(openid_provider, "staff.b", ohif_oidc_port)
    claims = op.claims_of(staff_b)
    assert claims["realm_access"]["roles"] == [] and claims["resource_access"] == {"pacs-gateway": {"roles": ["staff"]}}
    assert stow(gateway, staff_b, data).status_code == 200
    assert call(gateway, staff_b, "DELETE", f"/dicom-web/studies/{study}").status_code == 403  # staff may not delete
    doctor_a = user_token(openid_provider, "dr.a", ohif_oidc_port)
    assert call(gateway, doctor_a, "DELETE", f"/dicom-web/studies/{study}").status_code == 404  # clinic B's study
    assert found(gateway, staff_b, study) == 1


# --- refusals ----------------------------------------------------------------------------------

def test_tokens_of_another_issuer_are_refused(gateway, openid_provider):
    # Another realm, with its own keys: the gateway does not know the key.
    other = service_token(openid_provider, realm="other")
    assert op.claims_of(other)["iss"] == openid_provider.issuer("other")
    refused(call(gateway, other), "unknown key id")
    # Another realm signed with the same key set: only iss tells it apart.
    sandbox = service_token(openid_provider, realm="dental-sandbox")
    assert op.claims_of(sandbox)["iss"] == openid_provider.issuer("dental-sandbox")
    refused(call(gateway, sandbox), "token of another issuer (iss)")


def test_a_token_of_another_audience_is_refused(gateway, openid_provider):
    # A client without the audience mapper: Keycloak's tokens then say aud "account".
    token = service_token(openid_provider, "reporting")
    claims = op.claims_of(token)
    assert claims["aud"] == "account" and claims["clinicId"] == "A" and claims["iss"] == openid_provider.issuer()
    refused(call(gateway, token), "token is not for this audience (aud)")


def test_an_expired_token_is_refused(gateway, openid_provider):
    token = service_token(openid_provider, "short-lived")  # access.token.lifespan: 1 second
    claims = op.claims_of(token)
    assert claims["exp"] - claims["iat"] == 1
    time.sleep(max(0.0, claims["exp"] + LEEWAY + 1 - time.time()))
    refused(call(gateway, token), "token expired")


# --- key rotation mid-run ------------------------------------------------------------------------

def test_key_rotation_mid_run(gateway, openid_provider):
    old_token = service_token(openid_provider)
    old_kid = op.header_of(old_token)["kid"]
    assert call(gateway, old_token).status_code == 200
    jwks_fetches = _jwks_fetches(openid_provider)

    kids = openid_provider.rotate_keys()  # a new active key; the old one stays, passive
    assert kids[1:] == [old_kid] and kids[0] != old_kid
    new_token = service_token(openid_provider)
    assert op.header_of(new_token)["kid"] == kids[0]
    assert call(gateway, new_token).status_code == 200  # unknown kid: the gateway fetched the JWKS again
    assert _jwks_fetches(openid_provider) > jwks_fetches
    assert call(gateway, old_token).status_code == 200  # still published: still valid

    assert openid_provider.retire_keys() == [kids[0]]  # the old key leaves the JWKS
    time.sleep(JWKS_MAX_AGE + 0.5)  # the gateway's cached JWKS is due for a refetch
    refused(call(gateway, old_token), "unknown key id")
    assert call(gateway, new_token).status_code == 200
    assert call(gateway, service_token(openid_provider)).status_code == 200


def _jwks_fetches(provider) -> int:
    path = "/" + provider.discovery()["jwks_uri"].split("/", 3)[3]
    return sum(1 for r in provider.requests_served() if r["path"] == path and r["userAgent"].startswith("Python-urllib"))


# --- OHIF logs in through the provider --------------------------------------------------------------

FAMILY = "OIDCOHIF"
LOGIN_PAGE_JS = "!!document.querySelector('#kc-form-login #kc-login')"


def type_into(browser: harness.Browser, selector: str, text: str) -> None:
    """Focus a field and type into it, as a user does (CDP Input.insertText)."""
    assert browser.evaluate(f"(() => {{ const el = document.querySelector({selector!r}); "
                            "if (!el) return false; el.focus(); return true; })()"), selector
    browser.send("Input.insertText", {"text": text})


def test_ohif_logs_in_through_the_provider_and_opens_a_study(gateway, openid_provider, ohif_oidc_port, ohif_tools,
                                                             tmp_path):
    chromium, dist = ohif_tools
    study, series = generate_uid(), generate_uid()
    instances = harness.ct_series(study_uid=study, series_uid=series, patient_name=f"{FAMILY}^PHANTOM",
                                  patient_id="OIDC-OHIF-1", slices=6, size=128)
    importer = service_token(openid_provider, op.IMPORTER)  # the deploy realm's machine client, clinic "default"
    stored = harness.stow(gateway.dicomweb, instances, headers={"Authorization": f"Bearer {importer}"})
    assert stored.status_code == 200, stored.text

    # OHIF's own oidc configuration (authorization code with PKCE: its oidc-client-ts client).
    oidc = [{"authority": openid_provider.issuer(), "client_id": op.OHIF_CLIENT, "redirect_uri": "/callback",
             "response_type": "code", "scope": "openid profile email", "post_logout_redirect_uri": "/"}]
    with harness.OhifSite(dist, gateway.dicomweb, oidc=oidc, port=ohif_oidc_port) as site, \
            harness.Browser(chromium) as browser:
        browser.goto(f"{site.url}/?patientName={FAMILY}")
        try:
            browser.wait_for(LOGIN_PAGE_JS, timeout=45)  # OHIF sent the browser to the provider
        except TimeoutError:
            browser.screenshot(tmp_path / "no-login-page.png")
            pytest.fail(f"no login page at {browser.evaluate('location.href')}: {browser.console[-10:]}")
        assert browser.evaluate("location.href").startswith(openid_provider.issuer() + "/interaction/")
        type_into(browser, "#username", OHIF_USER)
        type_into(browser, "#password", "not-the-password")
        browser.evaluate("document.querySelector('#kc-login').click()")
        browser.wait_for("document.querySelector('#input-error')?.innerText", timeout=30)
        assert "Invalid username or password" in browser.evaluate("document.querySelector('#input-error').innerText")
        type_into(browser, "#username", OHIF_USER)
        type_into(browser, "#password", OHIF_PASSWORD)
        browser.evaluate("document.querySelector('#kc-login').click()")

        # Back in OHIF, logged in: the study list of clinic "default", filtered.
        try:
            browser.wait_for(f"location.origin === {site.url!r} && ({harness.LIST_LOADED_JS})", timeout=60)
        except TimeoutError:
            browser.screenshot(tmp_path / "no-study-list.png")
            pytest.fail(f"no study list at {browser.evaluate('location.href')}: "
                        f"{browser.evaluate('document.body.innerText')[:500]!r} {browser.console[-10:]}")
        # The rows come after the list itself (a loaded machine may take a while).
        try:
            browser.wait_for(f"document.body.innerText.includes({FAMILY!r}) && "
                             "document.body.innerText.includes('OIDC-OHIF-1')", timeout=30)
        except TimeoutError:
            pytest.fail(f"the study is not in the list: {browser.evaluate('document.body.innerText')[:2000]!r}")

        browser.goto(f"{site.url}/viewer?StudyInstanceUIDs={study}")
        try:
            browser.wait_for(harness.PAINTED_JS, timeout=60, interval=0.5)
        except TimeoutError:
            browser.screenshot(tmp_path / "viewer-timeout.png")
            pytest.fail(f"viewport never painted: {browser.evaluate(harness.CANVAS_STATS_JS)}; "
                        f"{[r.describe() for r in browser.requests_to(gateway.dicomweb) if not r.ok][:5]}")
        browser.wait_network_idle(gateway.dicomweb, idle=0.5, timeout=60)
        print(f"\nOHIF through the OpenID provider: {browser.screenshot(tmp_path / 'viewer.png')}")

        sent = browser.requests_to(gateway.dicomweb)
        failed = [r.describe() for r in sent if not r.ok]
        assert not failed, failed
        assert any("/frames/" in r.url for r in sent), [r.url for r in sent]
        # Every request carries a token of the provider for dr.demo through ohif-viewer (opening the
        # viewer's address reloads OHIF, which signs in again on the provider's session: a new token).
        headers = [{k.lower(): v for k, v in r.headers.items()}.get("authorization", "") for r in sent
                   if r.method == "GET"]
        assert headers and all(h.startswith("Bearer ") for h in headers), headers
        for token in set(headers):
            claims = op.claims_of(token.removeprefix("Bearer "))
            assert (claims["iss"], claims["azp"], claims["preferred_username"], claims["clinicId"]) == (
                openid_provider.issuer(), op.OHIF_CLIENT, OHIF_USER, "default"), claims

    # The gateway knew the user behind OHIF's token: its audit log names dr.demo reading the study.
    admin = user_token(openid_provider, "admin.default", ohif_oidc_port)
    audit = call(gateway, admin, path="/api/v1/audit", params={"user": OHIF_USER, "resource": f"study:{study}"})
    assert audit.status_code == 200, audit.text
    assert {r["door"] for r in audit.json()["records"]} == {"dicomweb"}
    assert {r["outcome"] for r in audit.json()["records"]} == {"ok"}
