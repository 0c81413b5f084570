"""Mini CT: a small CT of a region of interest, made from a stored series and stored as a new
series (through the one ingest path, so QIDO-RS, WADO-RS and DIMSE see it like any other).

A request names a range of slices along the slice axis (``z``: 1-based, inclusive), an
optional in-plane box (``box``: in pixels of the source, or in mm along the image's row and
column directions, in patient coordinates) and a down-sampling factor ``downsample`` (1-4)
that applies on all three axes: each voxel of the result is the mean of a factor³ block of
the source (blocks that do not fit whole are dropped). Each new instance is the source
slice's header with its geometry corrected — Rows, Columns, PixelSpacing (× factor),
ImagePositionPatient (the centre of the first block), SliceThickness and SpacingBetweenSlices
(× factor), SliceLocation — new UIDs (derived from the request's hash, so the same request
makes the same instances), ImageType ``DERIVED\\SECONDARY``, a Source Image Sequence naming
the source slices and a Derivation Description with the parameters. The result is kept as
the derived object ``mini-ct/{hash}`` of the source series: the same request on the same
content answers the series made before.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from auth import policy
from auth.audit import OK, resource_name
from auth.base import Principal
from gateway.errors import BackendUnavailable, BadRequest
from gateway.services.archives import slice_order
from gateway.services.derived import MINI_CT_PREFIX, blob_key, content_version
from storage.errors import StorageError
from storage.records import DerivedObject, InstanceRecord

logger = logging.getLogger(__name__)

MAX_FACTOR = 4
READ_THREADS = 4


@dataclass
class MiniCtRequest:
    first: int  # 1-based slice positions, inclusive
    last: int
    x: int = 0  # pixels of the source: columns
    y: int = 0  # rows
    width: int | None = None
    height: int | None = None
    factor: int = 1

    def key(self) -> dict:
        return {"z": [self.first, self.last], "box": [self.x, self.y, self.width, self.height], "factor": self.factor}


def _floats(ds: Dataset, keyword: str, count: int) -> list[float] | None:
    value = ds.get(keyword)
    try:
        values = [float(v) for v in value] if value is not None else []
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def pixel_box(box: dict | None, header: Dataset, rows: int, columns: int) -> tuple[int, int, int, int]:
    """(x, y, width, height) in source pixels; 400 naming the valid bounds when outside."""
    if not box:
        return 0, 0, columns, rows
    units = box.get("units", "pixels")
    if units == "mm":
        spacing = _floats(header, "PixelSpacing", 2)
        orientation = _floats(header, "ImageOrientationPatient", 6)
        origin = _floats(header, "ImagePositionPatient", 3)
        if not (spacing and orientation and origin):
            raise BadRequest("a box in mm needs PixelSpacing, ImageOrientationPatient and ImagePositionPatient, "
                             "which this series lacks: give it in pixels")
        along_row = float(np.dot(origin, orientation[:3]))
        along_column = float(np.dot(origin, orientation[3:]))
        x = math.floor((float(box["x"]) - along_row) / spacing[1] + 0.5)
        y = math.floor((float(box["y"]) - along_column) / spacing[0] + 0.5)
        width = max(1, round(float(box["width"]) / spacing[1]))
        height = max(1, round(float(box["height"]) / spacing[0]))
        mm_bounds = (f" (in mm along the rows {along_row:.2f} to {along_row + columns * spacing[1]:.2f}, "
                     f"along the columns {along_column:.2f} to {along_column + rows * spacing[0]:.2f})")
    elif units == "pixels":
        x, y = int(box.get("x", 0)), int(box.get("y", 0))
        width, height = int(box.get("width", columns - x)), int(box.get("height", rows - y))
        mm_bounds = ""
    else:
        raise BadRequest(f"box units {units!r}: pixels or mm")
    if x < 0 or y < 0 or width < 1 or height < 1 or x + width > columns or y + height > rows:
        raise BadRequest(f"box x={x}, y={y}, width={width}, height={height} (pixels) is outside the series' "
                         f"{columns}×{rows} slices: x + width must be at most {columns} and y + height at most "
                         f"{rows}, x and y from 0{mm_bounds}")
    return x, y, width, height


@dataclass
class MiniCt:
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    cached: bool
    geometry: dict


class MiniCtService:
    def __init__(self, index, retrieve, ingest, derived, blobs, *, access):
        self.index = index
        self.retrieve = retrieve
        self.ingest = ingest
        self.derived = derived
        self.blobs = blobs
        self.access = access

    def make(self, principal: Principal, study: str, series: str, *, z: tuple[int, int] | None,
             box: dict | None, factor: int) -> MiniCt:
        resource = resource_name(study, series)
        self.access.require(principal, policy.WRITE, resource=resource)
        clinic = principal.clinic_id
        try:
            records = [r for r in self.index.instances(clinic, study, series) if r.frame_index]
            headers = list(self.index.instance_headers(clinic, study, series))
        except StorageError as exc:
            raise BackendUnavailable(f"index read failed: {exc}") from exc
        if not records:  # not this clinic's (a share does not let one write into another clinic)
            raise self.access.not_found(principal, "write", f"series {series}", study, series)
        if any((r.number_of_frames or 1) != 1 for r in records):
            raise BadRequest("Mini CT is made of single-frame slices; this series holds multi-frame instances")
        ordered = slice_order(records, headers)
        count = len(ordered)
        first, last = z if z is not None else (1, count)
        if not 1 <= first <= last <= count:
            raise BadRequest(f"z={first}-{last} is outside the series' slices: 1-{count} (first ≤ last)")
        if not 1 <= factor <= MAX_FACTOR:
            raise BadRequest(f"downsample {factor}: from 1 to {MAX_FACTOR}")
        with contextlib.closing(self.retrieve.open(ordered[first - 1])) as fh:
            template = self.retrieve.read_header(fh)
        rows, columns = int(template.Rows), int(template.Columns)
        if int(template.get("SamplesPerPixel", 1)) != 1:
            raise BadRequest("Mini CT is made of grayscale slices")
        x, y, width, height = pixel_box(box, template, rows, columns)
        groups = (last - first + 1) // factor
        if groups < 1 or width // factor < 1 or height // factor < 1:
            raise BadRequest(f"downsample {factor} leaves nothing of {last - first + 1} slice(s) of "
                             f"{width}×{height}: give a larger range or box, or a smaller factor")
        request = MiniCtRequest(first, last, x, y, width, height, factor)
        source_version = content_version(records, {})
        digest = hashlib.sha256(json.dumps([series, source_version, request.key()]).encode()).hexdigest()[:20]
        name = MINI_CT_PREFIX + digest
        cached = self.derived.store.get(clinic, series, name)
        if cached is not None and cached.version == source_version:
            uids = cached.info["sop_uids"]
            if self.index.instances(clinic, study, cached.info["series_uid"]):
                return MiniCt(study, cached.info["series_uid"], uids, True, cached.info["geometry"])
        made = self._build(principal, ordered[first - 1:first - 1 + groups * factor], request, digest, template,
                           _step(ordered, headers) or _source_step(template))
        manifest = {"series_uid": made.series_uid, "sop_uids": made.sop_uids, "geometry": made.geometry,
                    "request": request.key()}
        key = blob_key(clinic, study, series, source_version, name)
        path = self.blobs.staging_dir() / f"minict-{digest}.json"
        path.write_text(json.dumps(manifest))
        self.blobs.put_file(key, path)
        self.derived.store.put([DerivedObject(clinic, study, series, name, source_version, key, "application/json",
                                              len(json.dumps(manifest)), manifest, created_at=int(time.time() * 1000))])
        self.access.audit.record("store", OK, principal=principal, resource=resource_name(study, made.series_uid),
                                 resource_clinic=clinic, detail=f"Mini CT of series {series}: {request.key()}")
        return made

    def _build(self, principal: Principal, slices: list[InstanceRecord], request: MiniCtRequest, digest: str,
               template: Dataset, source_step: float | None) -> MiniCt:
        factor = request.factor
        new_series = generate_uid(entropy_srcs=[digest, "series"])
        groups = [slices[i:i + factor] for i in range(0, len(slices), factor)]

        def read(record: InstanceRecord):
            pixels, header = self.retrieve.decoded_frame(record, 1)
            return pixels, header

        staged, uids, positions = [], [], []
        geometry: dict = {}
        try:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                for number, group in enumerate(groups, start=1):
                    decoded = list(pool.map(read, group))
                    ds, position = self._slice(decoded, group, request, digest, new_series, number, geometry,
                                               source_step)
                    uids.append(ds.SOPInstanceUID)
                    positions.append(position)
                    out = io.BytesIO()
                    pydicom.dcmwrite(out, ds, enforce_file_format=True)
                    out.seek(0)
                    staged.append(self.ingest.stage(out))
            outcomes = self.ingest.commit_many(staged, principal=principal)
        finally:
            for item in staged:
                discard = getattr(item, "discard", None)
                if discard:
                    discard()
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise BadRequest(f"the Mini CT could not be stored: {failed[0].error}")
        geometry["positions"] = positions
        return MiniCt(str(template.StudyInstanceUID), new_series, uids, False, geometry)

    def _slice(self, decoded, group: list[InstanceRecord], request: MiniCtRequest, digest: str, new_series: str,
               number: int, geometry: dict, source_step: float | None):
        factor = request.factor
        headers = [h for _, h in decoded]
        stack = np.stack([p for p, _ in decoded]).astype(np.float64)
        crop = stack[:, request.y:request.y + request.height, request.x:request.x + request.width]
        rows, columns = request.height // factor, request.width // factor
        crop = crop[:, :rows * factor, :columns * factor]
        blocks = crop.reshape(len(group), rows, factor, columns, factor).mean(axis=(0, 2, 4))
        first = headers[0]
        dtype = decoded[0][0].dtype
        info = np.iinfo(dtype)
        pixels = np.clip(np.rint(blocks), info.min, info.max).astype(dtype)

        orientation = _floats(first, "ImageOrientationPatient", 6) or [1, 0, 0, 0, 1, 0]
        spacing = _floats(first, "PixelSpacing", 2) or [1.0, 1.0]
        row_dir, column_dir = np.array(orientation[:3]), np.array(orientation[3:])
        origins = [np.array(_floats(h, "ImagePositionPatient", 3) or [0.0, 0.0, 0.0]) for h in headers]
        centre = (factor - 1) / 2
        position = (np.mean(origins, axis=0) + (request.x + centre) * spacing[1] * row_dir
                    + (request.y + centre) * spacing[0] * column_dir)

        ds = Dataset()
        for element in first:
            if element.tag.group != 0x0002 and element.keyword not in DROPPED:
                ds.add(element)
        ds.file_meta = FileMetaDataset()
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[digest, str(number)])
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesInstanceUID = new_series
        ds.SeriesNumber = (int(first.get("SeriesNumber") or 0) % 1000) + 1000
        ds.SeriesDescription = f"Mini CT z {request.first}-{request.last} x{factor}"[:64]
        image_type = list(first.get("ImageType") or [])
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:3]] if len(image_type) > 2 else ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = (f"Mini CT of series {first.SeriesInstanceUID}: slices {request.first}-"
                                    f"{request.last}, box x={request.x} y={request.y} {request.width}x"
                                    f"{request.height} px, downsampled x{factor}")[:1024]
        ds.SourceImageSequence = [_reference(r) for r in group]
        ds.InstanceNumber = number
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [_ds(spacing[0] * factor), _ds(spacing[1] * factor)]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        normal = np.cross(row_dir, column_dir)
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        thickness = first.get("SliceThickness")
        if thickness not in (None, ""):
            ds.SliceThickness = _ds(float(thickness) * factor)
        if source_step:
            ds.SpacingBetweenSlices = _ds(abs(source_step) * factor)
        if number == 1:
            geometry.update({"rows": rows, "columns": columns, "factor": factor, "orientation": orientation,
                             "pixel_spacing": [spacing[0] * factor, spacing[1] * factor],
                             "spacing_between_slices": abs(source_step) * factor if source_step else None})
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        return ds, [float(v) for v in position]


DROPPED = {"PixelData", "NumberOfFrames", "LargestImagePixelValue", "SmallestImagePixelValue",
           "SourceImageSequence", "SpacingBetweenSlices", "SliceThickness", "SliceLocation", "DerivationDescription"}


def _ds(value: float) -> str:
    """A DS value (at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def _step(ordered: list[InstanceRecord], headers: list[str]) -> float | None:
    """The distance between two neighbouring slices along the normal, from the index headers."""
    if len(ordered) < 2:
        return None
    by_sop = {}
    for text in headers:
        header = json.loads(text)
        sop = ((header.get("00080018") or {}).get("Value") or [None])[0]
        by_sop[sop] = header
    try:
        a, b = (by_sop[r.sop_uid] for r in ordered[:2])
        pa, pb = (np.array([float(v) for v in h["00200032"]["Value"]]) for h in (a, b))
        iop = [float(v) for v in a["00200037"]["Value"]]
    except (KeyError, TypeError, ValueError):
        return None
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(pb - pa, normal)) or None


def _source_step(header: Dataset) -> float | None:
    spacing = header.get("SpacingBetweenSlices") or header.get("SliceThickness")
    try:
        return float(spacing) if spacing not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _reference(record: InstanceRecord) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = record.sop_class_uid
    item.ReferencedSOPInstanceUID = record.sop_uid
    return item
