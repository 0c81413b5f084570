"""Every backend has contract tests: adding one without a contract subclass fails here.

The backends are those of the entry-point groups (installed metadata) and those declared in
``setup.cfg`` (so a declaration not yet reinstalled counts too). A blob store is covered when
some class in a ``tests/contract/test_*.py`` module subclasses :class:`BlobStoreContract` with
``backend_class`` set to it. An index backend offers several stores (``offers``): each of
them needs its store's contract (:data:`STORE_CONTRACTS`) combined with the backend, and the
backend itself :class:`IndexBackendContract`. Each contract's
``test_fixture_builds_the_declared_backend`` checks that the fixture really builds it.
"""
from __future__ import annotations

import configparser
import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import tests.contract  # noqa: E402
from storage import registry  # noqa: E402
from storage.base import INDEX_KINDS  # noqa: E402
from tests.contract.annotations import (  # noqa: E402
    AnnotationStoreContract,
    MaskStoreContract,
    ProjectStoreContract,
    UserStoreContract,
)
from tests.contract.audit import AuditLogContract  # noqa: E402
from tests.contract.backend import IndexBackendContract  # noqa: E402
from tests.contract.blob import BlobStoreContract  # noqa: E402
from tests.contract.derived import DerivedStoreContract  # noqa: E402
from tests.contract.instances import InstanceIndexContract  # noqa: E402
from tests.contract.jobs import JobQueueContract  # noqa: E402
from tests.contract.metadata import MetadataStoreContract  # noqa: E402
from tests.contract.shares import ShareStoreContract  # noqa: E402
from tests.contract.uploads import UploadStoreContract  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The contract of each kind of backend.
CONTRACTS = {
    "gateway.blob_stores": BlobStoreContract,
    "gateway.index_stores": IndexBackendContract,
    "gateway.metadata_stores": MetadataStoreContract,
}
# The contract of each store an index backend may offer.
STORE_CONTRACTS = {
    "instances": InstanceIndexContract,
    "jobs": JobQueueContract,
    "shares": ShareStoreContract,
    "audit": AuditLogContract,
    "uploads": UploadStoreContract,
    "derived": DerivedStoreContract,
    "users": UserStoreContract,
    "projects": ProjectStoreContract,
    "annotations": AnnotationStoreContract,
    "masks": MaskStoreContract,
}


def _declared_in_setup_cfg(group: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    raw = parser.get("options.entry_points", group, fallback="")
    pairs = (line.split("=", 1) for line in raw.splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def _backends(group: str) -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=group)}
    found.update(_declared_in_setup_cfg(group))
    return found


def _load(value: str) -> type:
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    return obj


def _contract_classes() -> list[type]:
    classes = []
    for info in pkgutil.iter_modules(tests.contract.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"tests.contract.{info.name}")
            classes.extend(cls for _, cls in inspect.getmembers(module, inspect.isclass)
                           if cls.__module__ == module.__name__ and cls.__name__.startswith("Test"))
    return classes


def _covered(contract: type) -> set[type]:
    return {cls.backend_class for cls in _contract_classes()
            if issubclass(cls, contract) and getattr(cls, "backend_class", None) is not None}


def test_every_store_kind_has_a_contract():
    """Every slot (entry-point group) and every store an index backend may offer has its
    contract class: a new slot comes with its contract, or this fails."""
    assert set(CONTRACTS) == set(registry.GROUPS.values())
    assert set(STORE_CONTRACTS) == set(INDEX_KINDS)
    assert all(inspect.isclass(c) for c in (*CONTRACTS.values(), *STORE_CONTRACTS.values()))


@pytest.mark.parametrize("group", sorted(CONTRACTS))
def test_every_backend_has_a_contract_subclass(group):
    backends = _backends(group)
    assert backends, f"no backend declared in entry-point group {group}"
    contract = CONTRACTS[group]
    missing = []
    for name, value in sorted(backends.items()):
        try:
            backend = _load(value)
        except ImportError as exc:  # an optional dependency: the backend still needs its contract classes
            missing.append(f"{name} = {value} (cannot be imported: {exc})")
            continue
        if backend not in _covered(contract):
            missing.append(f"{name} = {value}: no {contract.__name__} subclass")
        for kind in getattr(backend, "offers", ()) if contract is IndexBackendContract else ():
            if backend not in _covered(STORE_CONTRACTS[kind]):
                missing.append(f"{name} = {value} offers {kind}: no {STORE_CONTRACTS[kind].__name__} subclass")
    assert not missing, (f"backends of {group} without contract tests in tests/contract (add `class "
                         f"Test<Name>(<Contract>, <Backend fixtures>)` with backend_class and its fixture): "
                         + "; ".join(missing))


def test_the_meta_test_notices_a_backend_without_contract(monkeypatch):
    """A backend declared with no contract subclass is reported (the check is not vacuous)."""
    import tests.contract.test_entry_points as me

    real = me._backends
    monkeypatch.setattr(me, "_backends", lambda group: {**real(group), "orphan": "collections:OrderedDict"})
    with pytest.raises(AssertionError, match="orphan = collections:OrderedDict"):
        test_every_backend_has_a_contract_subclass("gateway.index_stores")


def test_the_meta_test_notices_a_metadata_store_without_contract(monkeypatch):
    import tests.contract.test_entry_points as me
    from storage.index.metadata import SqlMetadataStore

    real = me._contract_classes
    monkeypatch.setattr(me, "_contract_classes",
                        lambda: [c for c in real() if getattr(c, "backend_class", None) is not SqlMetadataStore])
    with pytest.raises(AssertionError, match="sql = storage.index.metadata:SqlMetadataStore: no "
                                             "MetadataStoreContract subclass"):
        test_every_backend_has_a_contract_subclass("gateway.metadata_stores")


def test_the_meta_test_notices_an_offered_store_without_contract(monkeypatch):
    import tests.contract.test_entry_points as me
    from storage.index.sqlite import SqliteIndexStore

    real = me._contract_classes
    monkeypatch.setattr(me, "_contract_classes",
                        lambda: [c for c in real() if not (issubclass(c, JobQueueContract)
                                                           and c.backend_class is SqliteIndexStore)])
    with pytest.raises(AssertionError, match="offers jobs: no JobQueueContract subclass"):
        test_every_backend_has_a_contract_subclass("gateway.index_stores")


def test_the_built_in_plugins_are_entry_points():
    """Built-in plugins register exactly as a third-party package's would."""
    from plugins.manager import create_plugin_manager

    declared = _declared_in_setup_cfg("gateway.plugins")
    assert "forwarding" in declared
    pm = create_plugin_manager()
    assert set(declared) <= {name for name, _ in pm.list_name_plugin()}
