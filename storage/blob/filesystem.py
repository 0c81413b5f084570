"""Blob store on a local folder: one file per key, written by atomic rename."""
from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from storage.errors import ObjectNotFound, Unavailable

logger = logging.getLogger(__name__)

_STAGING = ".staging"
_SYNC_THREADS = 8  # fsync releases the GIL; the disk groups concurrent syncs into one journal commit


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
        error = self.put_files([(key, path)])[0]
        if error is not None:
            raise error

    def put_files(self, items: Sequence[tuple[str, Path]]) -> list[Exception | None]:
        """Sync the files (in parallel), rename each into place, then sync each folder once:
        the same durability as a sync of each file and of its folder, one after the other,
        without paying for them serially."""
        errors: list[Exception | None] = [None] * len(items)
        targets: list[Path | None] = [None] * len(items)
        for i, (key, _) in enumerate(items):
            try:
                targets[i] = self._path(key)
            except ValueError as exc:
                errors[i] = exc
        if self.fsync:
            todo = [i for i in range(len(items)) if errors[i] is None]
            for i, error in zip(todo, self._map(_sync_file, [items[i][1] for i in todo])):
                if error is not None:
                    errors[i] = self._unavailable(items[i][0], error)
        folders: dict[Path, list[int]] = {}
        for i, (key, path) in enumerate(items):
            target = targets[i]
            if errors[i] is not None:
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(path, target)
                except FileNotFoundError:
                    raise
                except OSError:  # another file system: copy beside the target, then rename
                    tmp = target.with_name(target.name + ".part")
                    shutil.copyfile(path, tmp)
                    os.replace(tmp, target)
                    os.unlink(path)
            except OSError as exc:
                errors[i] = self._unavailable(key, exc)
                continue
            folders.setdefault(target.parent, []).append(i)
        if self.fsync and folders:
            for (folder, members), error in zip(folders.items(), self._map(_sync_folder, list(folders))):
                if error is not None:
                    for i in members:
                        errors[i] = self._unavailable(items[i][0], error)
        return errors

    def sync_staged(self, path: Path) -> None:
        """The file's sync now: the one :meth:`put_files` does later then finds nothing to write."""
        if self.fsync:
            error = _sync_file(path)
            if error is not None:
                raise self._unavailable(Path(path).name, error)

    def _map(self, func, args: list) -> list[OSError | None]:
        if len(args) <= 1:
            return [func(arg) for arg in args]
        with ThreadPoolExecutor(min(_SYNC_THREADS, len(args)), thread_name_prefix="blob-sync") as pool:
            return list(pool.map(func, args))

    @staticmethod
    def _unavailable(key: str, exc: OSError) -> Unavailable:
        return Unavailable(f"cannot write blob {key}: {exc.strerror or exc}")

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


def _sync_file(path: Path) -> OSError | None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc
    return None


def _sync_folder(folder: Path) -> OSError | None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None
