"""How the client splits one upload into archives sent at once."""
from __future__ import annotations

from pathlib import Path

import pytest

from proprietary.client import _split


def _files(tmp_path: Path, sizes: list[int]) -> list[tuple[str, Path]]:
    entries = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i:03d}.dcm"
        path.write_bytes(b"x" * size)
        entries.append((path.name, path))
    return entries


def test_equal_files_split_into_equal_contiguous_runs(tmp_path):
    entries = _files(tmp_path, [100] * 10)
    groups = _split(entries, 4)
    assert [len(g) for g in groups] == [3, 2, 3, 2]
    assert [e for g in groups for e in g] == entries  # every entry once, in order


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_every_entry_is_sent_once_in_order_and_no_archive_is_empty(tmp_path, parts):
    entries = _files(tmp_path, [5, 900, 1, 1, 300, 0, 40, 2000, 7, 7, 7])
    groups = _split(entries, parts)
    assert len(groups) <= parts and all(groups)
    assert [e for g in groups for e in g] == entries


def test_fewer_entries_than_parts_make_one_archive_each(tmp_path):
    entries = _files(tmp_path, [10, 20])
    assert _split(entries, 4) == [[entries[0]], [entries[1]]]


def test_a_big_file_does_not_leave_the_others_in_one_archive(tmp_path):
    entries = _files(tmp_path, [1000] + [100] * 10)
    groups = _split(entries, 2)
    assert groups == [entries[:1], entries[1:]]


def test_nothing_to_send_is_no_archive(tmp_path):
    assert _split([], 4) == []
