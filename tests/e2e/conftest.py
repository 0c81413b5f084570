"""Fixtures of the DIMSE end-to-end tests (helpers in :mod:`tests.e2e.dimse_support`)."""
from __future__ import annotations

import pytest

from tests.e2e.dimse_support import DimseServer
from tests.helpers import free_port


@pytest.fixture(scope="session")
def move_destination_port() -> int:
    """The port of the C-MOVE destination "DEST" declared in the shared listener's settings."""
    return free_port()


@pytest.fixture(scope="session")
def dimse_server(tmp_path_factory, move_destination_port):
    """One real gateway with the DIMSE listener, shared by the DIMSE tests (distinct UIDs)."""
    destinations = [{"ae_title": "DEST", "host": "127.0.0.1", "port": move_destination_port}]
    srv = DimseServer(tmp_path_factory.mktemp("dimse") / "data", destinations=destinations).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ohif_tools():
    """(chromium path, OHIF dist folder) of the OHIF browser tests, installed when missing;
    without them the tests skip, except under CI=true where they fail."""
    from tests.conftest import IN_CI
    from tests.e2e import ohif_harness as harness

    try:
        return harness.ensure_chromium(), harness.ensure_ohif()
    except harness.Unavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and the OHIF browser test cannot run: {exc}")
        pytest.skip(f"OHIF browser test needs Chromium and the OHIF build: {exc}")


# --- a standards OpenID Provider (tests/oidc_provider), one process for the session ---------------

@pytest.fixture(scope="session")
def ohif_oidc_port() -> int:
    """The port of the OHIF site that logs in through :func:`openid_provider` (its redirect URI)."""
    return free_port()


@pytest.fixture(scope="session")
def openid_provider(tmp_path_factory, ohif_oidc_port):
    """oidc-provider serving :func:`tests.e2e.openid_provider.session_realms` (the realm of
    deploy/keycloak/dental-realm.json plus the tests' users and clients, and two other issuers)
    on loopback; stopped at the end of the session. Without Node or the npm package: skipped, or
    failed under CI=true."""
    from tests.e2e import openid_provider as op
    from tests.services import missing_service

    try:
        op.ensure_provider()
    except op.Unavailable as exc:
        missing_service(f"the OpenID provider tests need Node and the oidc-provider package: {exc}")
    specs, keys_of = op.session_realms(f"http://127.0.0.1:{ohif_oidc_port}")
    provider = op.OpenIdProvider(tmp_path_factory.mktemp("openid-provider"), specs, keys_of=keys_of).start()
    yield provider
    provider.stop()
