"""Every backend has contract tests: adding one without a contract subclass fails here.

The backends are those of the entry-point groups (installed metadata) and those
declared in ``setup.cfg`` (so a declaration not yet reinstalled counts too). A
backend is covered when some class in a ``tests/contract/test_*.py`` module
subclasses the contract of its kind with ``backend_class`` set to the backend
class; the contract's ``test_fixture_builds_the_declared_backend`` checks that
the class's ``store`` fixture really builds it.
"""
from __future__ import annotations

import configparser
import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.contract.blob", "tests.contract.index")

import tests.contract  # noqa: E402
from storage import registry  # noqa: E402
from tests.contract.blob import BlobStoreContract  # noqa: E402
from tests.contract.index import IndexStoreContract  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = {
    "gateway.blob_stores": BlobStoreContract,
    "gateway.index_stores": IndexStoreContract,
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


def test_every_store_kind_has_a_contract():
    assert set(CONTRACTS) == set(registry.GROUPS.values())


@pytest.mark.parametrize("group", sorted(CONTRACTS))
def test_every_backend_has_a_contract_subclass(group):
    backends = _backends(group)
    assert backends, f"no backend declared in entry-point group {group}"
    contract = CONTRACTS[group]
    covered = {cls.backend_class for cls in _contract_classes()
               if issubclass(cls, contract) and getattr(cls, "backend_class", None) is not None}
    missing = []
    for name, value in sorted(backends.items()):
        try:
            backend = _load(value)
        except ImportError as exc:  # an optional dependency: the backend still needs its contract class
            missing.append(f"{name} = {value} (cannot be imported: {exc})")
            continue
        if backend not in covered:
            missing.append(f"{name} = {value}")
    assert not missing, (f"backends of {group} without a {contract.__name__} subclass in tests/contract "
                         f"(add `class Test<Name>({contract.__name__})` with backend_class and a store "
                         f"fixture): {', '.join(missing)}")


def test_the_meta_test_notices_a_backend_without_contract(monkeypatch):
    """A backend declared with no contract subclass is reported (the check is not vacuous)."""
    import tests.contract.test_entry_points as me

    real = me._backends
    monkeypatch.setattr(me, "_backends", lambda group: {**real(group), "orphan": "collections:OrderedDict"})
    with pytest.raises(AssertionError, match="orphan = collections:OrderedDict"):
        test_every_backend_has_a_contract_subclass("gateway.index_stores")
