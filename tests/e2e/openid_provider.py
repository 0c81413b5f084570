"""A standards OpenID Provider for the end-to-end tests, as its own process on loopback.

``tests/oidc_provider/provider.mjs`` configures panva's ``oidc-provider`` (npm, an OpenID
Certified implementation; the version is pinned by ``tests/oidc_provider/package-lock.json``)
from Keycloak realm exports, and runs on Node (Debian's ``nodejs``).

* :func:`ensure_provider` finds ``node`` (installing Debian's ``nodejs`` and ``npm`` with apt-get
  when missing, as the OHIF harness installs Chromium) and runs ``npm ci`` once into a cache
  folder keyed by the lock file (``~/.cache/gateway-tests/oidc-provider/<hash>``, or under
  ``$GATEWAY_TEST_CACHE``); the script is copied beside its ``node_modules``.
* :func:`build_realm` is ``deploy/keycloak/dental-realm.json`` with what a test adds (users,
  clients, the OHIF site's redirect URI).
* :class:`OpenIdProvider` starts the process, waits for each realm's discovery document, gets
  tokens from its token endpoint (client credentials; authorization code with PKCE through
  the login form, as a browser does) and drives its admin API (key rotation, request log).

Failures to obtain Node or the package raise :class:`Unavailable`; the fixture decides whether
that skips (developer machine) or fails (``CI=true``).
"""
from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import os
import re
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from tests.e2e.ohif_harness import Unavailable, apt_install, cache_root, file_lock
from tests.services import stop_process_group

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "oidc_provider"
DEPLOY_REALM = ROOT / "deploy" / "keycloak" / "dental-realm.json"
NODE_MAJOR = 18  # Debian 12's nodejs; oidc-provider 8 runs on it


def _node_major(node: str) -> int:
    res = subprocess.run([node, "--version"], check=False, capture_output=True, text=True, timeout=30)
    match = re.match(r"v(\d+)\.", res.stdout.strip())
    return int(match.group(1)) if match else 0


def ensure_node() -> tuple[str, str]:
    """Paths of ``node`` and ``npm``, installed with apt-get (Debian ``nodejs``, ``npm``) when missing."""
    def found():
        return shutil.which("node") or shutil.which("nodejs"), shutil.which("npm")

    node, npm = found()
    if not (node and npm):
        with file_lock(cache_root() / "apt.lock"):
            node, npm = found()
            if not (node and npm):
                apt_install(tuple(p for p, have in (("nodejs", node), ("npm", npm)) if not have))
                node, npm = found()
    if not (node and npm):
        raise Unavailable("nodejs and npm installed but no node or npm on PATH")
    if _node_major(node) < NODE_MAJOR:
        raise Unavailable(f"{node} is older than Node {NODE_MAJOR}, which oidc-provider needs")
    return node, npm


def ensure_provider() -> tuple[str, Path]:
    """(node, the provider script beside its installed ``node_modules``)."""
    node, npm = ensure_node()
    lock = (SOURCE / "package-lock.json").read_bytes()
    folder = cache_root() / "oidc-provider" / hashlib.sha256(lock).hexdigest()[:16]
    with file_lock(folder.parent / ".lock"):
        if not (folder / "node_modules" / ".package-lock.json").is_file():
            staging = Path(tempfile.mkdtemp(prefix="install-", dir=folder.parent))
            try:
                for name in ("package.json", "package-lock.json"):
                    shutil.copy(SOURCE / name, staging / name)
                res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--omit=dev"], check=False, cwd=staging,
                                     capture_output=True, text=True, timeout=600)
                if res.returncode != 0:
                    raise Unavailable(f"npm ci of tests/oidc_provider failed ({res.returncode}): {res.stderr[-2000:]}")
                shutil.rmtree(folder, ignore_errors=True)
                staging.rename(folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        script = SOURCE / "provider.mjs"
        copy_ = folder / f"provider-{hashlib.sha256(script.read_bytes()).hexdigest()[:12]}.mjs"
        if not copy_.is_file():  # beside node_modules, so that its imports resolve there
            temp = copy_.with_suffix(".tmp")
            shutil.copy(script, temp)
            temp.rename(copy_)
    return node, copy_


# --- realms ------------------------------------------------------------------------------------

def deploy_realm() -> dict:
    return json.loads(DEPLOY_REALM.read_text())


def build_realm(*, name: str | None = None, users=(), clients=(), redirect_origin: str | None = None,
               base: dict | None = None) -> dict:
    """The deploy realm (or ``base``) with ``users`` and ``clients`` added (replacing those of the
    same name) and, with ``redirect_origin``, the OHIF client redirected to that site."""
    realm = copy.deepcopy(base or deploy_realm())
    if name:
        realm["realm"] = name
    by_name = {u["username"]: u for u in realm.get("users", [])}
    by_name.update({u["username"]: u for u in users})
    realm["users"] = list(by_name.values())
    by_id = {c["clientId"]: c for c in realm.get("clients", [])}
    by_id.update({c["clientId"]: c for c in clients})
    realm["clients"] = list(by_id.values())
    if redirect_origin:
        client_of(realm, OHIF_CLIENT)["redirectUris"] = [f"{redirect_origin}/*"]
    return realm



def user(username: str, clinic: str, *, roles=(), client_roles: dict | None = None, password: str = "secret") -> dict:
    """A realm-export user (as Keycloak exports one) with a password."""
    return {"username": username, "enabled": True, "email": f"{username}@clinic.example",
            "attributes": {"clinicId": [clinic]}, "realmRoles": list(roles), "clientRoles": client_roles or {},
            "credentials": [{"type": "password", "value": password, "temporary": False}]}


def service_client(client_id: str, secret: str, *, audience: str | None = "pacs-gateway",
                   lifespan: int | None = None) -> dict:
    """A confidential client with a service account (client credentials), as the deploy realm's
    ``pacs-importer``; without ``audience`` it has no audience mapper (Keycloak then says ``account``)."""
    mappers = [m for m in client_of(deploy_realm(), "pacs-importer")["protocolMappers"]
               if audience or m["protocolMapper"] != "oidc-audience-mapper"]
    for m in mappers:
        if m["protocolMapper"] == "oidc-audience-mapper":
            m["config"]["included.client.audience"] = audience
    return {"clientId": client_id, "enabled": True, "publicClient": False, "secret": secret,
            "standardFlowEnabled": False, "serviceAccountsEnabled": True, "protocolMappers": mappers,
            "attributes": {"access.token.lifespan": str(lifespan)} if lifespan else {}}


def service_account(client_id: str, clinic: str, roles=()) -> dict:
    return {"username": f"service-account-{client_id}", "enabled": True, "serviceAccountClientId": client_id,
            "attributes": {"clinicId": [clinic]}, "realmRoles": list(roles)}


def client_of(realm: dict, client_id: str) -> dict:
    return next(c for c in realm["clients"] if c["clientId"] == client_id)


# The session's provider: the deploy realm plus these users and clients (passwords and secrets
# are the tests' own), a realm "other" (another issuer, its own keys) and a realm
# "dental-sandbox" signed with dental's key set (another issuer, the same keys: only iss tells
# their tokens apart, as with providers whose tenants share keys).
OHIF_CLIENT, GATEWAY_AUDIENCE = "ohif-viewer", "pacs-gateway"
IMPORTER = "pacs-importer"
TEST_USERS = {  # username -> (clinic, realm roles, pacs-gateway client roles)
    "dr.a": ("A", ["doctor"], []),
    "support.a": ("A", ["support"], []),
    "staff.b": ("B", [], ["staff"]),
    "admin.default": ("default", ["admin"], []),
}
PASSWORD = "secret"
TEST_CLIENTS = {  # client id -> (secret, audience mapper, access token lifespan)
    "reporting": ("reporting-secret", None, None),  # forgot the audience mapper: aud is "account"
    "short-lived": ("short-lived-secret", GATEWAY_AUDIENCE, 1),
    "importer-a": ("importer-a-secret", GATEWAY_AUDIENCE, None),
}


def session_realms(ohif_origin: str) -> tuple[list[dict], dict[str, str]]:
    """(realm exports, {realm: realm whose keys it uses}) of the session's provider."""
    users = [user(name, clinic, roles=roles, client_roles={GATEWAY_AUDIENCE: client_roles} if client_roles else None,
                  password=PASSWORD) for name, (clinic, roles, client_roles) in TEST_USERS.items()]
    clients, accounts = [], []
    for client_id, (secret, audience, lifespan) in TEST_CLIENTS.items():
        clients.append(service_client(client_id, secret, audience=audience, lifespan=lifespan))
        accounts.append(service_account(client_id, "A", ["staff"]))
    dental = build_realm(users=users + accounts, clients=clients, redirect_origin=ohif_origin)
    return ([dental, build_realm(name="other", base=dental), build_realm(name="dental-sandbox", base=dental)],
            {"dental-sandbox": "dental"})


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _part(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def claims_of(token: str) -> dict:
    """The unverified payload of a JWT (for the test's own bookkeeping, never for trust)."""
    return _part(token, 1)


def header_of(token: str) -> dict:
    return _part(token, 0)


# --- the process -------------------------------------------------------------------------------

class OpenIdProvider:
    """``provider.mjs`` serving ``realms`` (realm-export dicts; a realm may name ``keysOf``
    another to share its key set) on a free loopback port."""

    def __init__(self, folder: Path, realms: list[dict], *, keys_of: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.realms = {r["realm"]: r for r in realms}
        self.keys_of = keys_of or {}
        self.admin_token = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log_path = self.folder / "provider.log"

    def issuer(self, realm: str = "dental") -> str:
        return f"{self.url}/realms/{realm}"

    def discovery(self, realm: str = "dental") -> dict:
        response = requests.get(self.issuer(realm) + "/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        return response.json()

    def start(self, timeout: float = 30) -> Self:
        node, script = ensure_provider()
        self.folder.mkdir(parents=True, exist_ok=True)
        specs = []
        for name, realm in self.realms.items():
            path = self.folder / f"{name}-realm.json"
            path.write_text(json.dumps(realm, indent=1))
            specs.append({"export": str(path), **({"keysOf": self.keys_of[name]} if name in self.keys_of else {})})
        config = self.folder / "provider.json"
        config.write_text(json.dumps({"host": "127.0.0.1", "port": 0, "realms": specs}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([node, str(script), str(config)], stdout=subprocess.PIPE, stderr=log,
                                         env={**os.environ, "OIDC_ADMIN_TOKEN": self.admin_token},
                                         start_new_session=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError(f"the OpenID provider did not start: {self.log()}")
        self.url = json.loads(line)["url"]
        deadline = time.monotonic() + timeout
        for name in self.realms:
            while True:
                try:
                    if self.discovery(name)["issuer"] == self.issuer(name):
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"no discovery document for realm {name}: {self.log()}")
                time.sleep(0.1)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process_group(self.proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- admin API (provider.mjs's own, for the tests) ---------------------------------------
    def _admin(self, method: str, path: str):
        response = requests.request(method, self.url + path, timeout=30,
                                    headers={"Authorization": f"Bearer {self.admin_token}"})
        response.raise_for_status()
        return response.json()

    def rotate_keys(self, realm: str = "dental") -> list[str]:
        """A new signing key; the old ones stay in the JWKS (Keycloak's passive keys). The kids, signing first."""
        return self._admin("POST", f"/admin/realms/{realm}/keys/rotate")["kids"]

    def retire_keys(self, realm: str = "dental") -> list[str]:
        """Every key but the signing key leaves the JWKS."""
        return self._admin("POST", f"/admin/realms/{realm}/keys/retire")["kids"]

    def requests_served(self) -> list[dict]:
        return self._admin("GET", "/admin/requests")

    # --- tokens from its token endpoint -------------------------------------------------------
    def client_credentials(self, client_id: str, secret: str, realm: str = "dental") -> dict:
        response = requests.post(self.discovery(realm)["token_endpoint"], data={"grant_type": "client_credentials"},
                                 auth=(client_id, secret), timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def login(self, username: str, password: str, *, client_id: str, redirect_uri: str, realm: str = "dental",
              scope: str = "openid profile") -> dict:
        """Authorization code with PKCE, through the login form, as a browser does; the token response."""
        meta = self.discovery(realm)
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(12)
        session = requests.Session()
        response = session.get(meta["authorization_endpoint"], timeout=30, params={
            "client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": scope,
            "state": state, "code_challenge": challenge, "code_challenge_method": "S256"})
        action = re.search(r'<form id="kc-form-login"[^>]*action="([^"]+)"', response.text)
        assert response.status_code == 200 and action, (response.status_code, response.text[:500])
        response = session.post(urljoin(response.url, html.unescape(action.group(1))), allow_redirects=False,
                                timeout=30, data={"username": username, "password": password})
        for _ in range(10):  # resume → consent → resume → the client's redirect URI
            location = response.headers.get("Location", "")
            if response.status_code not in (302, 303) or location.startswith(redirect_uri):
                break
            response = session.get(urljoin(response.url, location), allow_redirects=False, timeout=30)
        location = response.headers.get("Location", "")
        assert location.startswith(redirect_uri), (response.status_code, location, response.text[:500])
        query = parse_qs(urlsplit(location).query)
        assert query.get("state") == [state] and "code" in query, location
        token = requests.post(meta["token_endpoint"], timeout=30, data={
            "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect_uri,
            "client_id": client_id, "code_verifier": verifier})
        assert token.status_code == 200, token.text
        return token.json()
