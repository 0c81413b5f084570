"""What every store contract and every index backend share.

An index backend (``gateway.index_stores``) is one database offering several stores as
attributes (``backend.instances``, ``.jobs``, ``.shares``, ``.audit``). Its test module
writes one fixture mixin (``backend_class`` and a ``backend`` fixture returning a migrated,
empty backend) and combines it with each contract of a store it offers, and with
:class:`IndexBackendContract` for the backend itself::

    class SqliteBackend:
        backend_class = SqliteIndexStore

        @pytest.fixture
        def backend(self, tmp_path): ...

    class TestSqliteJobs(JobQueueContract, SqliteBackend):
        pass

The meta-test (``test_entry_points.py``) fails when an offered store has no such class.
"""
from __future__ import annotations

import inspect

import pytest

from storage.base import INDEX_KINDS, IndexBackend


def missing_methods(store, protocol: type) -> list[str]:
    return [name for name, member in vars(protocol).items()
            if not name.startswith("_") and callable(member) and not callable(getattr(store, name, None))]


class StoreContract:
    """Base of the contracts of the stores an index backend offers."""

    backend_class: type
    kind: str  # the attribute of the backend that is the store
    protocol: type

    @pytest.fixture
    def store(self, backend):
        return getattr(backend, self.kind)

    def test_fixture_builds_the_declared_backend(self, backend, store):
        assert type(backend) is self.backend_class
        assert self.kind in backend.offers, f"{self.backend_class.__name__} does not offer {self.kind}"
        missing = missing_methods(store, self.protocol)
        assert not missing, f"{type(store).__name__} lacks {self.protocol.__name__} methods: {', '.join(missing)}"
        assert isinstance(store, self.protocol)
        for name, member in vars(self.protocol).items():  # the same parameters as the protocol
            if not name.startswith("_") and callable(member):
                assert list(inspect.signature(getattr(store, name)).parameters) == \
                    list(inspect.signature(member).parameters)[1:], f"{type(store).__name__}.{name}"


class IndexBackendContract:
    """The backend itself: its schema and what it offers."""

    backend_class: type

    def test_fixture_builds_the_declared_backend(self, backend):
        assert type(backend) is self.backend_class
        assert isinstance(backend, IndexBackend)
        assert not missing_methods(backend, IndexBackend)

    def test_offers_every_kind_the_gateway_needs(self, backend):
        assert set(backend.offers) == set(INDEX_KINDS)
        for kind, protocol in INDEX_KINDS.items():
            assert isinstance(getattr(backend, kind), protocol), kind

    def test_migrate_is_idempotent(self, backend):
        assert backend.migrate() == []
        assert backend.migrate() == []
        backend.ping()
