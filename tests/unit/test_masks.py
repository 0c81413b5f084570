"""The parts of the mask and user services that need no server: PNG headers, profile claims,
the slices of a series (instances, or the frames of a lone multi-frame instance)."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from auth.base import Principal
from gateway.services.masks import MaskService, png_size
from gateway.services.users import profile
from storage.records import AnnotationRecord, InstanceRecord
from tests.e2e.annotation_support import png


def test_png_size_reads_the_ihdr():
    assert png_size(png(48, 40)[:24]) == (48, 40)
    assert png_size(png(48, 40)) == (48, 40)


@pytest.mark.parametrize("head", [
    b"", b"GIF89a" + b"\0" * 30, png(8, 8)[:23],  # not a PNG, truncated
    png(8, 8)[:12] + b"IDAT" + png(8, 8)[16:24],  # the first chunk is not IHDR
    png(8, 8)[:8] + struct.pack(">I", 12) + png(8, 8)[12:24],  # IHDR of the wrong length
    png(8, 8)[:16] + struct.pack(">II", 0, 8),  # zero width
])
def test_png_size_refuses_what_is_no_png(head):
    assert png_size(head) is None


def test_profile_from_oidc_claims():
    who = Principal("u1", "c1", claims={"preferred_username": "kim", "email": " kim@x ", "given_name": "Minji",
                                        "family_name": "Kim", "org": "Smile", "department": ["Ortho", "Perio"]})
    assert profile(who) == {"username": "kim", "email": "kim@x", "name": "Minji Kim", "organization": "Smile",
                            "department": "Ortho"}
    assert profile(Principal("u1", "c1", claims={"name": {"not": "text"}, "email": True})) == dict.fromkeys(
        ("username", "email", "name", "organization", "department"))


def _slices(records: list[InstanceRecord]) -> list[str]:
    service = MaskService.__new__(MaskService)
    service.index = SimpleNamespace(instances=lambda clinic, study, series: records)
    return service._series_slices(AnnotationRecord("a", "c1", "u", "1.2", "seg", "1.2.3"))


def _record(sop: str, number: int, frames: int | None = None) -> InstanceRecord:
    return InstanceRecord("c1", "1.2", "1.2.3", sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "k", 1,
                          "0" * 64, number_of_frames=frames, instance_number=number)


def test_the_slices_of_a_series():
    assert _slices([_record("a", 1), _record("b", 2), _record("c", 3)]) == ["a", "b", "c"]
    assert _slices([_record("cbct", 1, frames=4)]) == ["cbct"] * 4  # one multi-frame instance: its frames
    assert _slices([_record("a", 1, frames=2), _record("b", 2, frames=2)]) == ["a", "b"]
    assert _slices([]) == []
