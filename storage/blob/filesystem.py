"""Blob store on a local folder: one file per key, written by atomic rename."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterator

from storage.errors import ObjectNotFound, Unavailable

logger = logging.getLogger(__name__)

_STAGING = ".staging"


class FilesystemBlobStore:
    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        (self.root / _STAGING).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings) -> "FilesystemBlobStore":
        return cls(settings.path("storage.blob_dir", "blobs"), fsync=settings["storage.fsync"])

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith(_STAGING):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    def staging_dir(self) -> Path:
        return self.root / _STAGING

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
            try:
                os.replace(path, target)
            except OSError:  # another file system: copy beside the target, then rename
                tmp = target.with_name(target.name + ".part")
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
                os.unlink(path)
            if self.fsync:
                dir_fd = os.open(target.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise Unavailable(f"cannot write blob {key}: {exc.strerror or exc}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise Unavailable(f"cannot read blob {key}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str = "") -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d != _STAGING)
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    yield key

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"blob folder {self.root} is not writable")

    def presigned_put(self, key: str, *, expires_in: int | None = None, content_type: str | None = None,
                      content_length: int | None = None, sha256: str | None = None) -> None:
        """None: a folder takes no uploads of its own; the gateway serves the signed upload URL."""
        self._path(key)  # the key is still checked
        return None

    def close(self) -> None:
        pass
