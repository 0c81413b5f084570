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
