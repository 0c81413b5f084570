"""Sidecar files in bulk: JSON sidecars written beside the images (``gateway export-sidecars``),
legacy ``.prj`` sidecars converted to records (``gateway import-prj``, and the ``.prj`` files of
a zip upload when it completes).

- **Export** writes each record of a clinic as ``DIR/<the image's path in the zip download>``
  with ``.json`` for ``.dcm`` (``0001.json`` beside ``0001.dcm``; ``0001.preview.json`` for a
  variant), each file written whole then renamed, so a reader never sees half a file;
  re-running rewrites the same files.
- **Import** finds each ``*.prj`` under the folders, the image beside it (same folder, same
  name, any or no extension: ``IMG0001.prj`` ↔ ``IMG0001.dcm`` or ``IMG0001``), reads its UIDs
  from the DICOM header, and hands the XML to :meth:`MetadataService.import_prj` (the mapping
  is :mod:`gateway.services.prj`). Files are converted on several threads; re-running skips
  what was imported already, so it changes nothing.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from auth.base import Principal
from gateway.errors import GatewayError
from gateway.services.metadata import MetadataService
from gateway.services.prj import MAX_PRJ_BYTES
from storage.errors import StorageError
from storage.metadata import MetadataKey
from storage.records import Upload, UploadEntry

logger = logging.getLogger(__name__)

PRJ_SUFFIX = ".prj"
_NOT_IMAGES = {".prj", ".json", ".txt", ".xml", ".ini"}


@dataclass
class Report:
    """What a bulk run did: counts by outcome and a line per file that was not converted."""

    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def add(self, outcome: str, what: str, why: str = "") -> None:
        self.counts[outcome] += 1
        if outcome != "converted" and outcome != "written":
            self.lines.append(f"{outcome} {what}" + (f": {why}" if why else ""))

    def summary(self, outcomes: Iterable[str]) -> str:
        return ", ".join(f"{self.counts[o]} {o}" for o in outcomes)


# --- export -------------------------------------------------------------------------------------

def export_sidecars(metadata: MetadataService, clinic_id: str, folder: Path, *, study: str | None = None,
                    progress: Callable[[int], None] = lambda n: None) -> Report:
    """Every record of the clinic (of one study) as a JSON sidecar under ``folder``."""
    principal = Principal.system(clinic_id, "export-sidecars")
    report = Report()
    paths: dict[str, dict] = {}
    for record in metadata.records(clinic_id, study=study):
        k = record.key
        what = k.object_key
        try:
            if k.study_uid not in paths:
                paths.clear()  # records come study by study: keep one study's names
                paths[k.study_uid] = metadata.sidecar_paths(principal, k.study_uid)
            path = paths[k.study_uid].get((k.sop_uid, k.variant))
            if path is None:
                report.add("failed", what, "the image is no longer stored")
                continue
            document = metadata.sidecar_document(record, paths[k.study_uid].get((k.sop_uid, "original")))
            _write_atomically(folder / path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
            report.add("written", what)
        except (GatewayError, OSError) as exc:
            report.add("failed", what, getattr(exc, "message", str(exc)))
        progress(1)
    return report


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".sidecar-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# --- import ---------------------------------------------------------------------------------------

def prj_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            if path.suffix.lower() == PRJ_SUFFIX:
                yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(PRJ_SUFFIX):
                        yield Path(dirpath) / name
        else:
            raise FileNotFoundError(f"{path} does not exist")


def image_beside(prj: Path) -> Path | None:
    """The image a .prj belongs to: same folder, same name, with any extension or none."""
    stem = prj.stem
    candidates = [p for p in prj.parent.iterdir()
                  if p.is_file() and p != prj and (p.name == stem or (p.stem == stem and p.suffix.lower()
                                                                          not in _NOT_IMAGES))]
    return sorted(candidates, key=lambda p: (p.suffix.lower() != ".dcm", p.name))[0] if candidates else None


def _image_key(image: Path) -> MetadataKey:
    import pydicom

    ds = pydicom.dcmread(image, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    return MetadataKey.of(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), "original")


def import_prj_files(metadata: MetadataService, clinic_id: str, paths: Iterable[Path], *, jobs: int = 4,
                     progress: Callable[[int], None] = lambda n: None) -> Report:
    principal = Principal.system(clinic_id, "import-prj")
    report = Report()

    def one(prj: Path) -> tuple[str, str, str]:
        try:
            image = image_beside(prj)
            if image is None:
                return "failed", str(prj), "no image with the same name beside it"
            try:
                key = _image_key(image)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a file that is not DICOM
                return "failed", str(prj), f"{image.name} is not a DICOM image with UIDs ({type(exc).__name__})"
            if prj.stat().st_size > MAX_PRJ_BYTES:
                return "failed", str(prj), f"larger than {MAX_PRJ_BYTES} bytes"
            outcome, why = metadata.import_prj(principal, key, prj.read_bytes(), name=prj.name)
            return outcome, str(prj), why
        except (GatewayError, StorageError, OSError) as exc:
            return "failed", str(prj), getattr(exc, "message", str(exc))

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="import-prj") as pool:
        for outcome, what, why in pool.map(one, paths):
            report.add(outcome, what, why)
            progress(1)
    return report


def import_upload_sidecars(metadata: MetadataService, blobs, principal: Principal, upload: Upload,
                           entries: list[UploadEntry]) -> dict[str, int]:
    """The ``.prj`` sidecars of a completed upload, each beside its image in the archive (same
    folder and name), converted as by ``gateway import-prj``; the XML stays where the upload
    kept it. Counts by outcome."""
    images: dict[tuple[str, str], UploadEntry] = {}
    for entry in entries:
        if entry.outcome in ("stored", "duplicate", "replaced") and entry.sop_uid:
            path = PurePosixPath(entry.name.replace("\\", "/"))
            images.setdefault((str(path.parent), path.stem if path.suffix else path.name), entry)
    counts: Counter = Counter()
    for entry in entries:
        path = PurePosixPath(entry.name.replace("\\", "/"))
        if entry.outcome != "sidecar" or path.suffix.lower() != PRJ_SUFFIX or not entry.blob_key:
            continue
        image = images.get((str(path.parent), path.stem))
        if image is None:
            counts["failed"] += 1
            logger.info("upload %s: %s has no image beside it", upload.id, entry.name)
            continue
        try:
            with blobs.open(entry.blob_key) as fh:
                data = fh.read(MAX_PRJ_BYTES + 1)
            key = MetadataKey.of(image.study_uid, image.series_uid, image.sop_uid, "original")
            outcome, why = metadata.import_prj(principal, key, data, name=path.name, blob_key=entry.blob_key)
        except (GatewayError, StorageError, OSError, ValueError) as exc:
            outcome, why = "failed", getattr(exc, "message", str(exc))
        counts[outcome] += 1
        if outcome != "converted":
            logger.info("upload %s: %s %s: %s", upload.id, entry.name, outcome, why)
    return dict(counts)


__all__ = ["Report", "export_sidecars", "image_beside", "import_prj_files", "import_upload_sidecars", "prj_files"]
