"""``gateway migrate-backends`` copies image metadata: every record with every version of its
history and its mirrored share state, from an embedded deployment (SQLite, ``sql`` metadata)
to PostgreSQL and to DynamoDB (moto_server); a re-run changes nothing, a later source write is
brought over, and a target record that moved on is reported and left alone."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from pydicom.uid import generate_uid

from auth.base import Principal
from gateway.config import load_settings
from gateway.services import Services
from storage.metadata import MetadataKey, MetadataQuery
from tests.services import dicom_instance, env_of

pytestmark = pytest.mark.e2e

DOCTOR = Principal("dr.migrate", "default", frozenset({"doctor"}))
BIG = [{"id": f"a{i}", "points": [[i, j] for j in range(40)]} for i in range(200)]  # offloaded to a blob


def _services(settings: dict) -> Services:
    return Services.build(load_settings(overrides={"storage.fsync": False, **settings}, environ={}), plugins=False)


def _embedded(data_dir) -> list[MetadataKey]:
    """An embedded deployment with two images and three records: several versions, a mirrored
    share, annotations offloaded to the blob store."""
    study, series, sops = generate_uid(), generate_uid(), [generate_uid(), generate_uid()]
    services = _services({"storage.data_dir": str(data_dir)})
    try:
        for sop in sops:
            staged = services.ingest.stage(io.BytesIO(dicom_instance(study, series, sop)))
            assert services.ingest.commit(staged, principal=Principal.system("default", "test")).status == "stored"
        keys = [MetadataKey(study, series, sops[0]), MetadataKey(study, series, sops[0], "preview"),
                MetadataKey(study, series, sops[1])]
        meta = services.metadata
        meta.put(DOCTOR, keys[0], {"tags": ["implant"]}, if_match=None, if_none_match="*")
        meta.put(DOCTOR, keys[0], {"tags": ["implant", "molar"]}, if_match='"1"', if_none_match=None)
        meta.patch_viewer_state(DOCTOR, keys[0], {"zoom": 2.5}, if_match='"2"')
        meta.put(DOCTOR, keys[1], {"annotations": BIG}, if_match=None, if_none_match="*")
        meta.put(DOCTOR, keys[2], {"viewerState": {"rotation": 90}}, if_match=None, if_none_match="*")
        admin = Principal("admin", "default", frozenset({"admin"}))
        services.shares.create(admin, study=study, series=None, targets=[{"type": "clinic", "id": "lab-m"}])
        assert services.metadata_store.get("default", keys[0]).share["targets"][0]["id"] == "lab-m"
    finally:
        services.close()
    return keys


def _dump(settings: dict) -> dict:
    """Every record of clinic default with its history, as the store keeps them."""
    services = _services(settings)
    try:
        store = services.metadata_store
        return {r.key.object_key: (r, store.history("default", r.key))
                for r in store.search(MetadataQuery("default", limit=1000))}
    finally:
        services.close()


def _migrate(source_dir, target: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_of({**target, "storage.fsync": "false", "log.level": "warning"})}
    return subprocess.run([sys.executable, "-m", "gateway.cli", "migrate-backends", "--source-data-dir",
                           str(source_dir), "--quiet"], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("dynamodb", marks=pytest.mark.dynamodb)])
def target(request, tmp_path):
    """The target stores' settings: PostgreSQL (records in its index database), or SQLite with
    the records in a DynamoDB table (made by ``gateway metadata-table create``)."""
    settings: dict = {"storage.data_dir": str(tmp_path / "target")}
    if request.param == "postgresql":
        settings.update({"storage.index_backend": "postgresql",
                         "storage.postgres_dsn": request.getfixturevalue("postgres_dsn")})
    else:
        settings.update(request.getfixturevalue("moto_server").dynamodb_settings())
        made = subprocess.run([sys.executable, "-m", "gateway.cli", "metadata-table", "create"],
                              env={**os.environ, **env_of(settings)}, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
    return settings


def test_migrate_backends_copies_metadata_with_history(tmp_path, target):
    source_dir = tmp_path / "embedded"
    keys = _embedded(source_dir)
    source = {"storage.data_dir": str(source_dir)}
    expected = _dump(source)
    assert sorted(len(history) for _, history in expected.values()) == [1, 1, 3]

    first = _migrate(source_dir, target)
    assert first.returncode == 0, first.stderr
    assert "metadata records: 3 copied, 0 updated, 0 already there" in first.stdout, first.stdout
    assert _dump(target) == expected  # versions, history, times, authors and share state, as they were
    services = _services(target)
    try:  # the offloaded annotations came with the blobs, and the records serve as before
        document = services.metadata.get(DOCTOR, keys[1])
        assert document["annotations"] == BIG and document["version"] == 1
        current = services.metadata.get(DOCTOR, keys[0])
        assert (current["version"], current["viewerState"]["zoom"]) == (3, 2.5)
        assert [t["id"] for t in current["share"]["targets"]] == ["lab-m"]
        assert [r["objectKey"] for r in services.metadata.search(DOCTOR, shared=True)] == \
            [k.object_key for k in sorted(keys, reverse=True)]
    finally:
        services.close()

    again = _migrate(source_dir, target)
    assert again.returncode == 0, again.stderr
    assert "metadata records: 0 copied, 0 updated, 3 already there" in again.stdout, again.stdout
    assert _dump(target) == expected

    # A source written after the copy: the next run brings the versions over.
    services = _services(source)
    try:
        services.metadata.patch_viewer_state(DOCTOR, keys[2], {"zoom": 4}, if_match='"1"')
    finally:
        services.close()
    later = _migrate(source_dir, target)
    assert later.returncode == 0, later.stderr
    assert "metadata records: 0 copied, 1 updated, 2 already there" in later.stdout, later.stdout
    assert _dump(target) == _dump(source)

    # A target record that moved on is never overwritten: reported, exit 1.
    services = _services(target)
    try:
        services.metadata.patch_viewer_state(DOCTOR, keys[0], {"rotation": 180}, if_match='"3"')
    finally:
        services.close()
    moved = _migrate(source_dir, target)
    assert moved.returncode == 1
    assert f"failed metadata default/{keys[0].object_key}: the target's record differs" in moved.stderr
    assert "metadata records: 0 copied, 0 updated, 2 already there" in moved.stdout
    record, history = _dump(target)[keys[0].object_key]
    assert (record.version, record.viewer_state["rotation"], len(history)) == (4, 180, 4)
