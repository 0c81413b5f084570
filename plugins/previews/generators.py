"""What a generator of derived objects is, and what it is given.

A plugin's ``derived_generators(settings)`` hook returns :class:`Generator` objects. For each
series the ``previews`` job asks each one for its parameters (None: nothing to make for this
series), starts a :class:`Session` per generator, decodes the slices the sessions want, once,
on several threads, calls :meth:`Session.prepare` for each slice (on any thread: keep it free
of shared state) and :meth:`Session.add` with what it prepared (one thread, in slice order),
then :meth:`Session.finish`, whose :class:`Output` files become blobs recorded in the
index under a version that covers the instances and every generator's parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydicom import Dataset

from gateway.imaging.jpeg2000 import bin_pixels
from storage.records import InstanceRecord


def value(header: dict, tag: str, default: Any = None) -> Any:
    """The first value of a DICOM JSON attribute (``tag`` as 8 hex digits)."""
    values = (header.get(tag) or {}).get("Value") or []
    return values[0] if values else default


def values(header: dict, tag: str) -> list:
    return list((header.get(tag) or {}).get("Value") or [])


# Where enhanced (multi-frame) objects keep an attribute: its functional group macro.
MACRO_OF = {
    "00281053": "00289145", "00281052": "00289145",  # rescale: Pixel Value Transformation
    "00280030": "00289110", "00180050": "00289110", "00180088": "00289110",  # Pixel Measures
    "00200037": "00209116",  # Plane Orientation
    "00200032": "00209113",  # Plane Position
    "00281050": "00289132", "00281051": "00289132",  # Frame VOI LUT
}


def frame_values(header: dict, tag: str, frame: int = 1) -> list:
    """An attribute's values for one frame (1-based): the data set's own, else those of its
    per-frame functional group, else of the shared one (enhanced CT, MR...)."""
    own = values(header, tag)
    macro = MACRO_OF.get(tag)
    if own or macro is None:
        return own
    per_frame = values(header, "52009230")
    for groups in ([per_frame[frame - 1]] if len(per_frame) >= frame else []) + values(header, "52009229")[:1]:
        items = values(groups, macro)
        if items and values(items[0], tag):
            return values(items[0], tag)
    return []


def frame_value(header: dict, tag: str, frame: int = 1, default: Any = None) -> Any:
    found = frame_values(header, tag, frame)
    return found[0] if found else default


@dataclass
class Slice:
    """One image of a series: a frame of an instance, at ``index`` along the slice axis."""

    index: int  # 0-based
    record: InstanceRecord
    frame: int  # 1-based frame number within the instance
    header: dict  # the instance's DICOM JSON, as indexed
    position: list[float] | None  # ImagePositionPatient of the frame, when known
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # while the slice is prepared

    def binned(self, pixels: np.ndarray, factor: int) -> np.ndarray:
        """``pixels`` binned by ``factor``, computed once for every session that asks."""
        key = ("binned", factor)
        if key not in self.cache:
            self.cache[key] = bin_pixels(pixels, factor)
        return self.cache[key]


@dataclass
class SeriesInput:
    clinic_id: str
    study_uid: str
    series_uid: str
    slices: list[Slice]
    modality: str = ""

    @property
    def first(self) -> dict:
        return self.slices[0].header

    @property
    def middle(self) -> Slice:
        return self.slices[(len(self.slices) - 1) // 2]

    @property
    def volume(self) -> bool:
        """Several slices of one geometry (a CT, an MR): previews and snapshots apply."""
        return len(self.slices) > 1 and all(s.position is not None for s in self.slices)


@dataclass
class Output:
    """A file a session made: stored as the derived object ``name``."""

    name: str
    content_type: str
    path: Path
    info: dict = field(default_factory=dict)


class Session(Protocol):
    def wants(self, item: Slice) -> bool:
        """Whether this slice's pixels are needed (unwanted slices are not decoded for it)."""

    def prepare(self, item: Slice, pixels: np.ndarray, header: Dataset) -> Any:
        """The work of one slice, on any thread: stored values in ``pixels`` (rows × columns,
        or × 3 for colour), the instance's ``header``."""

    def add(self, item: Slice, prepared: Any) -> None:
        """What :meth:`prepare` returned, in slice order, on one thread."""

    def skip(self, item: Slice, reason: str) -> None:
        """This slice could not be decoded (the rest of the series goes on)."""

    def finish(self) -> list[Output]: ...


@runtime_checkable
class Generator(Protocol):
    name: str

    def params(self, series: SeriesInput, settings) -> dict | None:
        """The parameters of what this generator makes of ``series`` (part of the version),
        or None when it makes nothing of it."""

    def start(self, series: SeriesInput, params: dict, scratch: Path, version: str) -> Session:
        """A session writing its files under ``scratch``."""
