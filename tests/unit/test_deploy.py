"""The deployment files in deploy/ cannot be run here (no Docker, no cluster): they are kept
honest against the code instead. Every GATEWAY_* name they set is a setting and its value
converts; the ports, probes and commands they use exist; the example gateway.toml is what
``gateway config example`` prints; the Keycloak realm gives the claims and roles the settings
expect."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from auth.policy import USER_ROLES
from gateway.cli import main
from gateway.config import SETTINGS, example_toml, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BY_ENV = {"GATEWAY_" + s.name.upper().replace(".", "__"): s for s in SETTINGS}
DEFAULTS = {s.name: s.default for s in SETTINGS}


def _yaml(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def _env_of_files() -> dict[str, dict[str, str]]:
    """file -> {GATEWAY_* name: value} of every deploy file (None: set from a secret)."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix != ".json":
            names = dict.fromkeys(re.findall(r"\b(GATEWAY_[A-Z0-9_]+)", path.read_text()))
            found[str(path.relative_to(DEPLOY))] = names
    compose = _yaml("compose.yaml")[0]
    found["compose.yaml"].update(compose["x-gateway-env"])
    for doc in _yaml("kubernetes/gateway.yaml"):
        if doc["kind"] == "ConfigMap":
            found["kubernetes/gateway.yaml"].update(doc["data"])
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        for name, value in re.findall(r"(GATEWAY_[A-Z0-9_]+)=(\S+)", line):
            found["Dockerfile"][name] = value
    return found


def test_every_gateway_variable_is_a_setting_and_its_value_converts():
    for file, names in _env_of_files().items():
        for name, value in names.items():
            if name in ("GATEWAY_CONFIG",):
                continue
            assert name in BY_ENV, f"{file}: {name} is not a setting"
            if value is not None:
                load_settings(environ={name: str(value)})  # raises SettingsError naming it


def test_ports_are_the_settings():
    http, dimse = DEFAULTS["server.port"], DEFAULTS["dimse.port"]
    assert f"EXPOSE {http} {dimse}" in (DEPLOY / "Dockerfile").read_text()
    compose = _yaml("compose.yaml")[0]
    assert compose["services"]["gateway"]["ports"] == [f"{http}:{http}", f"{dimse}:{dimse}"]
    docs = _yaml("kubernetes/gateway.yaml")
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"http": int(config["GATEWAY_SERVER__PORT"]), "dicom": int(config["GATEWAY_DIMSE__PORT"])}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert [p["targetPort"] for p in services["gateway-dicom"]["spec"]["ports"]] == ["dicom"]
    assert services["gateway-dicom"]["metadata"]["annotations"][
        "service.beta.kubernetes.io/aws-load-balancer-healthcheck-port"] == str(http)
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


def test_probes_and_health_checks_are_routes_of_the_app(app):
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    docs = _yaml("kubernetes/gateway.yaml")
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    paths = {container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]}
    paths.add(next(d for d in docs if d["metadata"]["name"] == "gateway-dicom")["metadata"]["annotations"][
        "service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"])
    paths.update(re.findall(r"127\.0\.0\.1:\d+(/\w+)", (DEPLOY / "Dockerfile").read_text()))
    assert paths == {"/healthz", "/readyz", "/readyz/dimse"} and paths <= routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # alive, not ready: no restart loop


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_commands_the_files_run_exist(command):
    assert command in main.commands
    texts = [(DEPLOY / f).read_text() for f in ("Dockerfile", "compose.yaml", "kubernetes/gateway.yaml",
                                                 "systemd/gateway.service", "systemd/gateway-worker.service")]
    assert any(f"gateway {command}" in t or f'"gateway", "{command}"' in t for t in texts)


def test_the_example_settings_file_is_what_config_example_prints():
    printed = CliRunner().invoke(main, ["config", "example"]).output
    assert printed == example_toml() == (DEPLOY / "gateway.toml").read_text(), \
        "deploy/gateway.toml is stale: gateway config example > deploy/gateway.toml"
    values = {f"{table}.{key}": value for table, keys in tomllib.loads(printed).items() for key, value in keys.items()}
    assert set(values) == set(DEFAULTS)
    loaded = load_settings(overrides=values, environ={})
    assert all(loaded[name] == load_settings(environ={})[name] for name in DEFAULTS)


def test_the_keycloak_realm_gives_what_the_settings_expect():
    realm = json.loads((DEPLOY / "keycloak" / "dental-realm.json").read_text())
    env = _yaml("compose.yaml")[0]["x-gateway-env"]
    assert env["GATEWAY_AUTH__OIDC_ISSUER"].endswith(f"/realms/{realm['realm']}")
    assert {r["name"] for r in realm["roles"]["realm"]} == set(USER_ROLES)
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert env["GATEWAY_AUTH__OIDC_CLIENT_ID"] in clients
    mappers = [m for c in clients.values() for m in c.get("protocolMappers", [])]
    assert any(m["config"].get("included.client.audience") == env["GATEWAY_AUTH__OIDC_AUDIENCE"] for m in mappers)
    assert any(m["config"].get("claim.name") == env["GATEWAY_AUTH__OIDC_CLINIC_CLAIM"] == DEFAULTS[
        "auth.oidc_clinic_claim"] for m in mappers)


def test_every_client_of_the_keycloak_realm_gets_tokens_the_gateway_accepts():
    """What README's "A Keycloak realm that matches" says, client by client."""
    realm = json.loads((DEPLOY / "keycloak" / "dental-realm.json").read_text())
    env = _yaml("compose.yaml")[0]["x-gateway-env"]
    audience, gateway_client = env["GATEWAY_AUTH__OIDC_AUDIENCE"], env["GATEWAY_AUTH__OIDC_CLIENT_ID"]
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert clients[gateway_client].get("bearerOnly") is True
    assert {r["name"] for r in realm["roles"]["client"][gateway_client]} == set(USER_ROLES)
    readme = (DEPLOY.parent / "README.md").read_text()
    section = readme[readme.index("**A Keycloak realm that matches.**"):readme.index("**Roles and actions.**")]
    token_clients = [c for c in clients.values() if not c.get("bearerOnly")]
    assert {"ohif-viewer", "pacs-importer"} <= {c["clientId"] for c in token_clients}
    for client in token_clients:
        name = client["clientId"]
        assert f"`{name}`" in section, f"README does not describe client {name}"
        mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
        assert mappers["oidc-audience-mapper"]["included.client.audience"] == audience, name
        assert mappers["oidc-audience-mapper"]["access.token.claim"] == "true", name
        clinic = mappers["oidc-usermodel-attribute-mapper"]
        assert clinic["claim.name"] == env["GATEWAY_AUTH__OIDC_CLINIC_CLAIM"] == clinic["user.attribute"], name
        assert clinic["access.token.claim"] == "true", name
        if client.get("publicClient"):  # a browser viewer: authorization code with PKCE only
            assert client["attributes"]["pkce.code.challenge.method"] == "S256", name
            assert client["standardFlowEnabled"] and not client.get("implicitFlowEnabled"), name
            assert not client.get("directAccessGrantsEnabled"), name
            assert client["redirectUris"] and client["webOrigins"], name
            assert f"client_id: '{name}'" in section
        else:  # a machine client: client credentials, its service account a clinic's user
            assert client["serviceAccountsEnabled"] and not client.get("standardFlowEnabled"), name
            account = next(u for u in realm["users"] if u.get("serviceAccountClientId") == name)
            assert account["username"] == f"service-account-{name}"
            assert set(account["realmRoles"]) & set(USER_ROLES), name
    for user in realm["users"]:
        assert user["attributes"][env["GATEWAY_AUTH__OIDC_CLINIC_CLAIM"]], user["username"]
        assert set(user.get("realmRoles", [])) <= set(USER_ROLES), user["username"]


def test_the_grafana_dashboard_shows_metrics_that_exist():
    from prometheus_client import REGISTRY

    import gateway.metrics  # noqa: F401 - registers the metrics

    known = {sample for family in REGISTRY.collect() for sample in
             (family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count")}
    known |= {"gateway_jobs", "gateway_job_oldest_pending_age_seconds", "gateway_ready"}  # read at scrape time
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(gateway_[a-z_]+)", target["expr"])}
    assert used and used <= known, used - known
