"""The contract every blob store keeps (fsspec style).

A backend's test module subclasses :class:`BlobStoreContract`, sets
``backend_class`` and provides a ``store`` fixture returning an empty store of
that class.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import requests

from storage.base import BlobStore
from storage.errors import ObjectNotFound, StorageError

INVALID_KEYS = ["", "../x", "a/../../x", "/abs/x", "a//b", "a/./b", "a/"]


class BlobStoreContract:
    """Behaviour every ``gateway.blob_stores`` backend must show."""

    backend_class: type

    @staticmethod
    def stage(store, data: bytes, name: str = "upload.part") -> Path:
        """Spool ``data`` to the store's staging folder, as ingest does."""
        path = Path(store.staging_dir()) / name
        path.write_bytes(data)
        return path

    def put(self, store, key: str, data: bytes) -> None:
        store.put_file(key, self.stage(store, data))

    def test_fixture_builds_the_declared_backend(self, store):
        assert type(store) is self.backend_class
        missing = [name for name, member in vars(BlobStore).items()
                   if not name.startswith("_") and callable(member) and not callable(getattr(store, name, None))]
        assert not missing, f"{type(store).__name__} lacks BlobStore methods: {', '.join(missing)}"
        assert isinstance(store, BlobStore)

    def test_staging_dir_exists(self, store):
        staging = Path(store.staging_dir())
        assert staging.is_dir()
        probe = staging / "probe"
        probe.write_bytes(b"x")  # writable
        probe.unlink()

    def test_put_file_consumes_the_staged_file(self, store):
        data = os.urandom(70_000)
        path = self.stage(store, data)
        store.put_file("dicom/c1/1.2/1.2.3/1.2.3.4/abc.dcm", path)
        assert not path.exists()
        assert store.exists("dicom/c1/1.2/1.2.3/1.2.3.4/abc.dcm")
        with store.open("dicom/c1/1.2/1.2.3/1.2.3.4/abc.dcm") as fh:
            assert fh.read() == data

    def test_open_is_seekable(self, store):
        data = bytes(range(256)) * 40
        self.put(store, "a/b.bin", data)
        with store.open("a/b.bin") as fh:
            assert fh.seekable()
            fh.seek(1000)
            assert fh.read(16) == data[1000:1016]
            fh.seek(-10, io.SEEK_END)
            assert fh.read() == data[-10:]
            fh.seek(0)
            assert fh.tell() == 0
            assert fh.read(4) == data[:4]

    def test_empty_object(self, store):
        self.put(store, "empty", b"")
        with store.open("empty") as fh:
            assert fh.read() == b""

    def test_put_files_stores_each_and_reports_each(self, store):
        items = [(f"dicom/c1/1.2/1.2.{i % 2}/{i}.dcm", self.stage(store, bytes([i]) * (1000 + i), f"{i}.part"))
                 for i in range(12)]
        missing = Path(store.staging_dir()) / "gone.part"
        bad = self.stage(store, b"x", "bad.part")
        errors = store.put_files(items[:6] + [("dicom/c1/missing.dcm", missing), ("../bad", bad)] + items[6:])
        assert errors[:6] == [None] * 6 and errors[8:] == [None] * 6
        assert isinstance(errors[6], (StorageError, OSError))
        assert isinstance(errors[7], ValueError)
        for i, (key, path) in enumerate(items):
            assert not path.exists()
            with store.open(key) as fh:
                assert fh.read() == bytes([i]) * (1000 + i)
        assert not store.exists("dicom/c1/missing.dcm")
        assert sorted(store.keys()) == sorted(key for key, _ in items)
        assert store.put_files([]) == []

    def test_sync_staged_keeps_the_file_for_put_file(self, store):
        data = os.urandom(5000)
        path = self.stage(store, data)
        store.sync_staged(path)
        assert path.read_bytes() == data
        store.put_file("s/1", path)
        with store.open("s/1") as fh:
            assert fh.read() == data

    def test_put_file_replaces_whole_object(self, store):
        self.put(store, "k", b"first version, longer")
        self.put(store, "k", b"second")
        with store.open("k") as fh:
            assert fh.read() == b"second"
        assert list(store.keys()) == ["k"]

    def test_put_file_of_missing_source_leaves_no_object(self, store):
        with pytest.raises((StorageError, OSError)):
            store.put_file("x/y", Path(store.staging_dir()) / "does-not-exist.part")
        assert not store.exists("x/y")
        assert list(store.keys()) == []

    def test_open_missing_key(self, store):
        with pytest.raises(ObjectNotFound):
            store.open("no/such/key")
        with pytest.raises(KeyError):  # ObjectNotFound is also a KeyError
            store.open("no-such-key")

    def test_delete_is_idempotent(self, store):
        self.put(store, "d/1", b"1")
        self.put(store, "d/2", b"2")
        store.delete("d/1")
        assert not store.exists("d/1")
        store.delete("d/1")
        store.delete("never/was")
        assert store.exists("d/2")
        with pytest.raises(ObjectNotFound):
            store.open("d/1")

    def test_exists(self, store):
        assert not store.exists("e/1")
        self.put(store, "e/1", b"x")
        assert store.exists("e/1")
        assert not store.exists("e")  # a prefix is not an object

    def test_keys_with_prefix(self, store):
        for key in ("dicom/c1/s1/a", "dicom/c1/s1/b", "dicom/c1/s2/a", "dicom/c2/s1/a", "other"):
            self.put(store, key, key.encode())
        assert sorted(store.keys()) == ["dicom/c1/s1/a", "dicom/c1/s1/b", "dicom/c1/s2/a", "dicom/c2/s1/a",
                                        "other"]
        assert sorted(store.keys("dicom/c1/")) == ["dicom/c1/s1/a", "dicom/c1/s1/b", "dicom/c1/s2/a"]
        assert sorted(store.keys("dicom/c1/s1/")) == ["dicom/c1/s1/a", "dicom/c1/s1/b"]
        assert list(store.keys("nothing/")) == []

    def test_keys_do_not_list_staged_files(self, store):
        self.stage(store, b"pending", "pending.part")
        self.put(store, "k", b"v")
        assert list(store.keys()) == ["k"]

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_are_rejected(self, store, key):
        path = self.stage(store, b"x")
        with pytest.raises(ValueError):
            store.put_file(key, path)
        with pytest.raises(ValueError):
            store.open(key)
        with pytest.raises(ValueError):
            store.delete(key)
        with pytest.raises(ValueError):
            store.exists(key)

    # --- presigned PUT (masks uploaded straight to the store) -----------------------------------------
    def test_presigned_put_stores_the_object_or_leaves_it_to_the_gateway(self, store):
        data = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
        key = "mask/c1/a1/g1/0007_tooth.png"
        request = store.presigned_put(key, expires_in=120, content_type="image/png", content_length=len(data),
                                      sha256=hashlib.sha256(data).hexdigest())
        if request is None:  # the gateway serves the upload URL: nothing is made here
            assert not store.exists(key)
            return
        assert request.method == "PUT" and request.expires_in == 120
        assert request.headers["Content-Type"] == "image/png"
        response = requests.put(request.url, data=data, headers=request.headers, timeout=30)
        assert response.status_code == 200, response.text
        with store.open(key) as fh:
            assert fh.read() == data

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_presigned_put_checks_the_key(self, store, key):
        with pytest.raises(ValueError):
            store.presigned_put(key, expires_in=60, content_type="image/png", content_length=1, sha256="0" * 64)

    def test_ping(self, store):
        assert store.ping() is None
