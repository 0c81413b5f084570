"""The preview stream (derived object ``preview``): every slice of a series as a lossy JPEG 2000
codestream, binned, behind a JSON geometry header (:mod:`gateway.imaging.preview_format`).

Slices keep their stored values (the modality LUT is in the header: stored × slope +
intercept), binned ``previews.binning`` × ``previews.binning`` (block means) and compressed at
``previews.compression_ratio`` (relative to 16-bit samples; 1 = lossless); both can be set
per clinic in ``[[previews.clinics]]``. A built-in generator, declared as entry point
``preview-jpeg2000`` of group ``gateway.plugins`` like any third-party one.
"""
from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from gateway.imaging import jpeg2000
from gateway.imaging.preview_format import MEDIA_TYPE, encode_header
from plugins.hookspecs import hookimpl
from plugins.previews.generators import (
    Output,
    SeriesInput,
    Slice,
    frame_value,
    frame_values,
    value,
)

NAME = "preview"
FORMAT_VERSION = 1


def clinic_params(settings, clinic: str) -> tuple[float, int]:
    """(compression ratio, binning) for a clinic: its ``[[previews.clinics]]`` entry, else the defaults."""
    ratio, binning = settings["previews.compression_ratio"], settings["previews.binning"]
    for entry in settings["previews.clinics"]:
        if entry["clinic"] == clinic:
            ratio = entry.get("compression_ratio", ratio)
            binning = entry.get("binning", binning)
    return float(ratio), int(binning)


def _number(header: dict, tag: str, default: float | None = None, frame: int = 1) -> float | None:
    try:
        found = frame_value(header, tag, frame)
        return float(found) if found is not None else default
    except (TypeError, ValueError):
        return default


def _normal(orientation: list[float] | None) -> list[float] | None:
    if not orientation or len(orientation) != 6:
        return None
    r, c = orientation[:3], orientation[3:]
    n = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    length = math.sqrt(sum(v * v for v in n))
    return [v / length for v in n] if length > 1e-9 else None


class Jpeg2000Preview:
    name = NAME

    def params(self, series: SeriesInput, settings) -> dict | None:
        ratio, binning = clinic_params(settings, series.clinic_id)
        return {"codec": "jpeg2000", "compression_ratio": ratio, "binning": binning, "format": FORMAT_VERSION}

    def start(self, series: SeriesInput, params: dict, scratch: Path, version: str) -> "PreviewSession":
        return PreviewSession(series, params, scratch, version)


class PreviewSession:
    def __init__(self, series: SeriesInput, params: dict, scratch: Path, version: str):
        self.series = series
        self.params = params
        self.version = version
        self.ratio = params["compression_ratio"]
        self.binning = params["binning"]
        self.data_path = scratch / "preview.data"
        self.out_path = scratch / "preview.dpv"
        self.data = open(self.data_path, "wb")
        self.entries: list[dict] = []
        self.skipped: list[dict] = []
        self.offset = 0
        self.shape: tuple | None = None
        self.value_offset = 0
        self.window: dict | None = None
        first = series.first
        self.slope = _number(first, "00281053", 1.0)
        self.intercept = _number(first, "00281052", 0.0)

    def wants(self, item: Slice) -> bool:
        return True

    def prepare(self, item: Slice, pixels: np.ndarray, header) -> tuple:
        if pixels.ndim == 3 and pixels.dtype != np.uint8:
            raise ValueError(f"colour pixels of type {pixels.dtype} are not supported in previews")
        binned = item.binned(pixels, self.binning)
        samples, offset = jpeg2000.to_codec_samples(binned)
        codestream = jpeg2000.encode(samples, ratio=self.ratio)
        window = None
        if item.index == self.series.middle.index:
            window = self._window(item, binned)
        return codestream, binned.shape, offset, window

    def _window(self, item: Slice, binned: np.ndarray) -> dict:
        centers = frame_values(item.header, "00281050", item.frame)
        widths = frame_values(item.header, "00281051", item.frame)
        try:
            if centers and widths and float(widths[0]) > 0:
                return {"center": float(centers[0]), "width": float(widths[0]), "from": "header"}
        except (TypeError, ValueError):
            pass
        slope = _number(item.header, "00281053", 1.0, item.frame)
        intercept = _number(item.header, "00281052", 0.0, item.frame)
        low, high = np.percentile(binned.astype(np.float64) * slope + intercept, [1, 99])
        return {"center": float((low + high) / 2), "width": float(max(high - low, 1.0)), "from": "pixels"}

    def add(self, item: Slice, prepared: tuple) -> None:
        codestream, shape, offset, window = prepared
        if self.shape is None:
            self.shape, self.value_offset = shape, offset
        if shape != self.shape or offset != self.value_offset:
            self.skip(item, f"slice of {shape[1]}×{shape[0]} (binned) does not match the series' "
                            f"{self.shape[1]}×{self.shape[0]}")
            return
        if window is not None:
            self.window = window
        self.data.write(codestream)
        entry = {"index": len(self.entries), "sop_uid": item.record.sop_uid, "frame": item.frame,
                 "instance_number": item.record.instance_number, "position": item.position,
                 "offset": self.offset, "length": len(codestream)}
        slope = _number(item.header, "00281053", 1.0, item.frame)
        intercept = _number(item.header, "00281052", 0.0, item.frame)
        if (slope, intercept) != (self.slope, self.intercept):
            entry["rescale_slope"], entry["rescale_intercept"] = slope, intercept
        self.entries.append(entry)
        self.offset += len(codestream)

    def skip(self, item: Slice, reason: str) -> None:
        self.skipped.append({"sop_uid": item.record.sop_uid, "frame": item.frame, "reason": reason})

    def header(self) -> dict:
        first = self.series.first
        rows, columns = (self.shape or (0, 0))[:2]
        spacing = [float(v) for v in frame_values(first, "00280030")] or None
        orientation = [float(v) for v in frame_values(first, "00200037")] or None
        normal = _normal(orientation)
        steps = []
        if normal:
            locations = [sum(p * n for p, n in zip(e["position"], normal)) for e in self.entries if e["position"]]
            steps = [b - a for a, b in zip(locations, locations[1:])]
        return {
            "format": "dental-gateway-preview", "format_version": FORMAT_VERSION, "version": self.version,
            "non_diagnostic": True, "study_uid": self.series.study_uid, "series_uid": self.series.series_uid,
            "modality": self.series.modality, "codec": "jpeg2000", "codestream": "j2k",
            "compression_ratio": self.ratio, "lossless": not self.ratio > 1, "binning": self.binning,
            "rows": rows, "columns": columns, "slice_count": len(self.entries),
            "samples_per_pixel": int(value(first, "00280002", 1) or 1),
            "photometric_interpretation": str(value(first, "00280004", "MONOCHROME2")),
            "bits_stored": int(value(first, "00280101", 16) or 16),
            "value_offset": self.value_offset,
            "rescale_slope": self.slope, "rescale_intercept": self.intercept,
            "window": self.window,
            "pixel_spacing": [v * self.binning for v in spacing] if spacing else None,
            "source": {"rows": int(value(first, "00280010", 0) or 0), "columns": int(value(first, "00280011", 0) or 0),
                       "pixel_spacing": spacing},
            "orientation": orientation,
            "slice_thickness": _number(first, "00180050"),
            "spacing_between_slices": _number(first, "00180088"),
            "slice_spacing": round(statistics.median(steps), 6) if steps else None,
            "generated_at": int(time.time() * 1000),
            "skipped": self.skipped,
            "slices": self.entries,
        }

    def finish(self) -> list[Output]:
        self.data.close()
        if not self.entries:
            return []
        header = self.header()
        with open(self.out_path, "wb") as out, open(self.data_path, "rb") as data:
            out.write(encode_header(header))
            shutil.copyfileobj(data, out, 1024 * 1024)
        info = {k: v for k, v in header.items() if k != "slices"}
        return [Output(NAME, MEDIA_TYPE, self.out_path, info)]


@hookimpl
def derived_generators(settings):
    return [Jpeg2000Preview()]
