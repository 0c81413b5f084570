"""The filesystem blob store against the blob contract."""
from __future__ import annotations

import pytest


from storage.blob.filesystem import FilesystemBlobStore  # noqa: E402
from storage.errors import Unavailable  # noqa: E402
from tests.contract.blob import BlobStoreContract  # noqa: E402


class TestFilesystemBlob(BlobStoreContract):
    backend_class = FilesystemBlobStore

    @pytest.fixture(params=[False, True], ids=["no-fsync", "fsync"])
    def store(self, request, tmp_path):
        store = FilesystemBlobStore(tmp_path / "blobs", fsync=request.param)
        yield store
        store.close()

    def test_objects_are_files_under_the_root(self, store):
        self.put(store, "a/b/c.dcm", b"data")
        assert (store.root / "a" / "b" / "c.dcm").read_bytes() == b"data"

    def test_staging_keys_are_rejected(self, store):
        with pytest.raises(ValueError):
            store.open(".staging/upload.part")

    def test_ping_fails_when_the_root_is_gone(self, store):
        import shutil

        shutil.rmtree(store.root)
        with pytest.raises(Unavailable):
            store.ping()

    def test_from_settings(self, settings):
        store = FilesystemBlobStore.from_settings(settings)
        assert store.root == settings.data_dir / "blobs"
        assert store.fsync is False
        assert store.staging_dir().is_dir()
