"""Test data: the DICOM files that pydicom and pydicom-data ship, found without any download."""
from __future__ import annotations

from pathlib import Path

import pydicom


def pydicom_files() -> list[Path]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(folder.glob("*.dcm")) + sorted((folder.parent / "charset_files").glob("*.dcm"))


def pydicom_data_files() -> list[Path]:
    try:
        import pydicom_data  # noqa: F401  (the package of pydicom-data has no code; find its folder)
    except ImportError:
        pass
    import importlib.util

    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(list(spec.submodule_search_locations)[0], "data").glob("*.dcm"))


def all_files() -> list[Path]:
    return pydicom_files() + pydicom_data_files()


def sample_file(name: str) -> Path:
    for path in all_files():
        if path.name == name:
            return path
    raise FileNotFoundError(name)
