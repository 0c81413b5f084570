"""Finds backends by name through entry points, the same way for built-in and third-party ones.

One group per kind of backend: ``gateway.blob_stores`` (:class:`storage.base.BlobStore`),
``gateway.index_stores`` (:class:`storage.base.IndexBackend`: a database offering the instance
index, job queue, share store and audit log) and ``gateway.metadata_stores`` (:class:`storage.base.MetadataStore`: image metadata, in the SQL
index database or DynamoDB). A backend class is built with ``from_settings(settings)``, which
raises :class:`ValueError` for settings it cannot use; a metadata store also gets
``index=`` the index backend (the SQL store lives in it).
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

logger = logging.getLogger(__name__)

GROUPS = {
    "blob": "gateway.blob_stores",
    "index": "gateway.index_stores",
    "metadata": "gateway.metadata_stores",
}

# What to install when a built-in backend's import fails (fsspec's "err" hint).
INSTALL_HINTS = {
    "s3": "pip install 'dental-pacs-gateway[s3]'",
    "postgresql": "pip install 'dental-pacs-gateway[postgres]'",
    "dynamodb": "pip install 'dental-pacs-gateway[dynamodb]'",
}


class BackendNotFound(LookupError):
    pass


def available(kind: str) -> dict[str, str]:
    """Names and import paths of the backends of a kind."""
    return {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}


def backend_class(kind: str, name: str) -> type:
    matches = [ep for ep in entry_points(group=GROUPS[kind]) if ep.name == name]
    if not matches:
        known = ", ".join(sorted(available(kind))) or "none (is the package installed?)"
        raise BackendNotFound(f"no {kind} store named {name!r} in entry-point group {GROUPS[kind]}; known: {known}")
    try:
        return matches[0].load()
    except ImportError as exc:
        hint = INSTALL_HINTS.get(name)
        raise BackendNotFound(
            f"{kind} store {name!r} cannot be imported ({exc})" + (f"; install it with: {hint}" if hint else "")
        ) from exc


def create(kind: str, name: str, settings: Any, **context: Any) -> Any:
    return backend_class(kind, name).from_settings(settings, **context)
