"""``gateway import``: files, folders and DICOMDIR trees through the one ingest path."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.fileset import FileSet

from auth.base import DEFAULT_CLINIC
from gateway.cli import main
from storage.blob.filesystem import FilesystemBlobStore
from storage.index.sqlite import SqliteIndexStore
from tests import data

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
GOOD = ["CT_small.dcm", "MR_small.dcm"]
TRUNCATED = "MR_truncated.dcm"  # pixel data cut short: ingest rejects it


@pytest.fixture
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("GATEWAY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no ./gateway.toml of the developer
    return {"GATEWAY_STORAGE__DATA_DIR": str(tmp_path / "data"), "GATEWAY_STORAGE__FSYNC": "false",
            "GATEWAY_LOG__LEVEL": "warning"}


@pytest.fixture
def source(tmp_path) -> Path:
    """A folder of DICOM files, a truncated one, non-DICOM files and a DICOMDIR tree."""
    src = tmp_path / "src"
    src.mkdir()
    for name in [*GOOD, TRUNCATED]:
        shutil.copy(data.sample_file(name), src / name)
    (src / "notes.txt").write_text("not an image\n")
    (src / "fake.dcm").write_bytes(b"\x00" * 200)  # the extension does not make it DICOM
    tree = src / "cd"
    tree.mkdir()
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", tree / "DICOMDIR")
    for patient in ("77654033", "98892001", "98892003"):
        shutil.copytree(TEST_FILES / "dicomdirtests" / patient, tree / patient)
    return src


def dicomdir_sop_uids(source: Path) -> list[str]:
    return [instance.SOPInstanceUID for instance in FileSet(source / "cd" / "DICOMDIR")]


def run_import(env: dict, *paths: Path):
    return CliRunner().invoke(main, ["import", "--quiet", *map(str, paths)], env=env, catch_exceptions=False)


def summary(result) -> dict[str, int]:
    line = result.stdout.strip().splitlines()[-1]
    counts = {name: int(n) for n, name in re.findall(r"(\d+) ([a-zA-Z ]+?)(?:,|$)", line)}
    assert set(counts) == {"stored", "replaced", "duplicate", "rejected", "not DICOM"}, line
    return counts


def open_index(tmp_path: Path) -> SqliteIndexStore:
    return SqliteIndexStore(tmp_path / "data" / "index.sqlite3")


def test_import_folder_with_dicomdir_tree(tmp_path, env, source):
    in_tree = dicomdir_sop_uids(source)
    assert len(in_tree) == 31

    result = run_import(env, source)
    assert summary(result) == {"stored": len(GOOD) + len(in_tree), "replaced": 0, "duplicate": 0,
                               "rejected": 1, "not DICOM": 3}  # notes.txt, fake.dcm, DICOMDIR
    assert result.exit_code == 1
    assert f"rejected {source / TRUNCATED}" in result.stderr
    assert "DICOMDIR" not in result.stderr  # a DICOMDIR is skipped, not a rejected instance

    backend = open_index(tmp_path)
    index = backend.instances
    blobs = FilesystemBlobStore(tmp_path / "data" / "blobs", fsync=False)
    try:
        assert index.counts(DEFAULT_CLINIC)["instances"] == len(GOOD) + len(in_tree)
        expected = [pydicom.dcmread(data.sample_file(n), stop_before_pixels=True).SOPInstanceUID for n in GOOD] + in_tree
        for sop_uid in expected:
            record = index.find_instance(DEFAULT_CLINIC, sop_uid)
            assert record is not None, sop_uid
            assert blobs.exists(record.blob_key)
        ct = pydicom.dcmread(data.sample_file("CT_small.dcm"))
        [record] = index.instances(DEFAULT_CLINIC, ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
        with blobs.open(record.blob_key) as fh:
            assert fh.read() == data.sample_file("CT_small.dcm").read_bytes()  # stored as received
        # MR_truncated.dcm shares its SOP Instance UID with MR_small.dcm: the good file stays.
        mr = pydicom.dcmread(data.sample_file("MR_small.dcm"), stop_before_pixels=True)
        good_size = data.sample_file("MR_small.dcm").stat().st_size
        assert index.find_instance(DEFAULT_CLINIC, mr.SOPInstanceUID).size == good_size
    finally:
        backend.close()


def test_reimport_reports_duplicates_and_stores_nothing(tmp_path, env, source):
    first = summary(run_import(env, source))
    blobs_before = sorted(FilesystemBlobStore(tmp_path / "data" / "blobs", fsync=False).keys())

    result = run_import(env, source)
    assert summary(result) == {"stored": 0, "replaced": 0, "duplicate": first["stored"],
                               "rejected": 1, "not DICOM": 3}
    assert result.exit_code == 1
    assert sorted(FilesystemBlobStore(tmp_path / "data" / "blobs", fsync=False).keys()) == blobs_before
    backend = open_index(tmp_path)
    index = backend.instances
    try:
        assert index.counts()["instances"] == first["stored"]
    finally:
        backend.close()


def test_import_without_rejections_exits_zero(tmp_path, env, source):
    result = run_import(env, source / "CT_small.dcm", source / "notes.txt", source / "cd")
    assert result.exit_code == 0, result.output
    assert summary(result) == {"stored": 32, "replaced": 0, "duplicate": 0, "rejected": 0, "not DICOM": 2}


def test_import_of_a_missing_path(tmp_path, env):
    result = run_import(env, tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_large_import_runs_on_several_processes_and_counts_each_file_once(env, tmp_path, monkeypatch):
    """250 files with --jobs 2: two processes store their shares (spawned: the settings come
    from the environment), one rejected file is reported, and a re-run finds duplicates."""
    from gateway import importer
    from gateway.synthetic import cbct_series, to_bytes

    monkeypatch.setattr(importer, "FILES_PER_PROCESS", 100)

    folder = tmp_path / "many"
    folder.mkdir()
    for i, ds in enumerate(cbct_series(249, size=8, patient_id="IMPORT-JOBS")):
        (folder / f"{i:04d}.dcm").write_bytes(to_bytes(ds))
    shutil.copy(data.sample_file(TRUNCATED), folder / "zz-truncated.dcm")

    def run():
        return CliRunner().invoke(main, ["import", "--quiet", "--jobs", "2", str(folder)], env=env,
                                  catch_exceptions=False)

    first = run()
    assert first.exit_code == 1, first.output  # the truncated file
    assert summary(first) == {"stored": 249, "replaced": 0, "duplicate": 0, "rejected": 1, "not DICOM": 0}
    assert "zz-truncated.dcm" in first.stderr
    backend = open_index(tmp_path)
    try:
        assert backend.instances.counts(DEFAULT_CLINIC)["instances"] == 249
    finally:
        backend.close()
    again = run()
    assert summary(again) == {"stored": 0, "replaced": 0, "duplicate": 249, "rejected": 1, "not DICOM": 0}
