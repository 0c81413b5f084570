"""Synthetic dental DICOM data (no PHI) for tests, demos and benchmarks.

Everything is deterministic for a given seed, UIDs included, so two runs with the same
arguments produce byte-identical files.  The phantoms are cheap numpy compositions of
precomputed 2D shapes (ellipses, bands, tooth outlines); they look like a jaw in a viewer
but are not anatomically accurate.
"""
from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STUDY_DATETIME",
    "cbct_series",
    "write_cbct",
    "intraoral_image",
    "panoramic_image",
    "to_bytes",
]

DEFAULT_STUDY_DATETIME = datetime(2024, 1, 15, 9, 30, 0)
IMPLEMENTATION_VERSION_NAME = "GW_SYNTH_" + pydicom.__version__.replace(".", "")[:6]
MANUFACTURER = "Synthetic"
_DEIDENTIFICATION = "Synthetic phantom (gateway.synthetic), no PHI"

# Unsigned CT data uses the common -1024 intercept, so air (-1000 HU) is stored as 24.
_CT_UNSIGNED_INTERCEPT = -1024.0


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """A UID derived from `parts` only, so it is stable across runs."""
    return generate_uid(entropy_srcs=["gateway.synthetic", *(str(p) for p in parts)])


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _new_file_dataset(sop_class_uid: str, sop_instance_uid: str) -> FileDataset:
    ds = FileDataset(
        "",
        Dataset(),
        file_meta=_file_meta(sop_class_uid, sop_instance_uid),
        preamble=b"\x00" * 128,
        is_implicit_VR=False,
        is_little_endian=True,
    )
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def _set_patient_study(
    ds: Dataset,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    study_dt: datetime,
    study_description: str,
    accession: str,
) -> None:
    date, time = study_dt.strftime("%Y%m%d"), study_dt.strftime("%H%M%S")
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _DEIDENTIFICATION
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = date
    ds.StudyTime = time
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = study_description


def _set_series_equipment(
    ds: Dataset,
    *,
    modality: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    study_dt: datetime,
    model: str,
) -> None:
    date, time = study_dt.strftime("%Y%m%d"), study_dt.strftime("%H%M%S")
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.AcquisitionDate = date
    ds.AcquisitionTime = time
    ds.ContentDate = date
    ds.ContentTime = time
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model
    ds.SoftwareVersions = f"gateway.synthetic {pydicom.__version__}"
    ds.DeviceSerialNumber = "SYNTH-0"
    ds.InstitutionName = "Synthetic Dental Clinic"


def _copy_elements(src: Dataset, dst: Dataset) -> None:
    """Copy every element of src into dst without sharing element objects, so that
    changing one yielded dataset never changes another."""
    for elem in src:
        clone = copy.copy(elem)
        if isinstance(elem.value, (MultiValue, DicomSequence)):
            clone.value = copy.deepcopy(elem.value)
        dst.add(clone)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def _smooth_window(t: float, start: float, end: float, edge: float = 0.03) -> float:
    """1 inside [start, end], ramping linearly to 0 over `edge` on both sides."""
    if t <= start - edge or t >= end + edge:
        return 0.0
    if t < start:
        return (t - (start - edge)) / edge
    if t > end:
        return ((end + edge) - t) / edge
    return 1.0


def to_bytes(ds: Dataset) -> bytes:
    """Encode `ds` as a DICOM Part 10 file (128-byte preamble, DICM, file meta)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
        ds = FileDataset("", ds, file_meta=meta, preamble=b"\x00" * 128)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# CBCT
# --------------------------------------------------------------------------------------


class _Layer:
    """A shape blended into a slice; kept as flat pixel indices, since most shapes
    (bands, rings, small ellipses) cover a small fraction of their bounding box."""

    def __init__(self, values: np.ndarray) -> None:
        flat = values.reshape(-1)
        self.index = np.flatnonzero(flat)
        self.values = flat[self.index].astype(np.float32)

    def paint(self, img: np.ndarray, weight: float, value: float | None = None) -> None:
        """Blend `value` (or the layer's own values) into img with opacity `weight`."""
        if weight <= 0 or self.index.size == 0:
            return
        flat = img.reshape(-1)
        current = flat[self.index]
        target = self.values if value is None else np.float32(value)
        flat[self.index] = current + np.float32(weight) * (target - current)


class _CbctPhantom:
    """A head/jaw phantom in Hounsfield units, built from 2D layers computed once.

    z runs from the chin (t=0) to the orbits (t=1): mandible, lower roots, lower
    crowns, occlusal plane (t=0.5), upper crowns, upper roots, palate, maxillary
    sinuses, skull.  Image rows run anterior to posterior, columns patient right to
    left, as in LPS with an axial ImageOrientationPatient.
    """

    def __init__(self, size: int, seed: int) -> None:
        n = size
        coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)
        u = coords[None, :]
        v = coords[:, None]
        self.size = n

        # Elliptic radius of the head outline: thresholding it at a z-dependent scale
        # makes the head narrower at the chin without recomputing the shape.
        self.r_head = np.sqrt((u / 0.86) ** 2 + ((v - 0.12) / 0.95) ** 2).astype(np.float32)
        self.outside_fov = (u**2 + v**2) >= 0.985**2  # cylindrical reconstruction field

        # Dental arch: parabola v = v0 + k*u^2 opening posteriorly.
        v0, k = -0.6, 1.9
        dist = np.abs(v - v0 - k * u**2) / np.sqrt(1 + (2 * k * u) ** 2)
        dist = np.where(v < 0.12, dist, np.float32(9.0))

        def band(width: float) -> _Layer:
            return _Layer(dist < width)

        def ellipse(cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
            return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1

        self.mandible_cortex, self.mandible_core = band(0.07), band(0.052)
        self.maxilla_cortex, self.maxilla_core = band(0.07), band(0.052)
        self.palate = _Layer((v > v0 + k * u**2 + 0.02) & (v < 0.1))
        crowns, roots = self._teeth_fields(n, v0, k)
        self.crowns, self.roots = _Layer(crowns), _Layer(roots)
        self.airway = _Layer(ellipse(0.0, 0.30, 0.11, 0.07))
        spine_r = np.sqrt(u**2 + (v - 0.62) ** 2)
        self.spine_shell = _Layer((spine_r < 0.14) & (spine_r > 0.11))
        self.spine_core = _Layer(spine_r <= 0.11)
        self.sinuses = _Layer(ellipse(-0.33, -0.32, 0.19, 0.22) | ellipse(0.33, -0.32, 0.19, 0.22))
        self.nasal = _Layer(ellipse(0.0, -0.48, 0.09, 0.22))
        self._rings: dict[int, _Layer] = {}

        # Noise: one field a little larger than the slice; each slice takes a shifted
        # window of it, which is much cheaper than drawing fresh noise per slice.
        self.rng = np.random.default_rng(seed)
        self._pad = 32
        self.noise = self.rng.standard_normal((n + self._pad, n + self._pad), dtype=np.float32)
        self.noise *= np.float32(18.0)

    @staticmethod
    def _teeth_fields(n: int, v0: float, k: float) -> tuple[np.ndarray, np.ndarray]:
        """Crown (enamel shell, dentin, pulp) and root HU fields for 16 teeth."""
        crowns = np.zeros((n, n), dtype=np.float32)
        roots = np.zeros((n, n), dtype=np.float32)
        # Place 8 teeth per side along the arch by arc length, incisor to molar.
        us = np.linspace(0, 0.75, 2000)
        seg = np.sqrt(1 + (2 * k * us) ** 2) * (us[1] - us[0])
        arc = np.concatenate([[0.0], np.cumsum(seg[:-1])])
        widths = [0.055, 0.05, 0.06, 0.06, 0.06, 0.085, 0.085, 0.08]
        centres: list[tuple[float, float, float]] = []
        pos = widths[0] / 2
        for w in widths:
            cu = float(np.interp(pos, arc, us))
            centres.append((cu, v0 + k * cu * cu, w / 2))
            pos += w + 0.006
        half = n / 2
        for side in (-1.0, 1.0):
            for cu, cv, radius in centres:
                ci, cj = cv * half + (n - 1) / 2, side * cu * half + (n - 1) / 2
                rad_px = max(radius * half, 0.5)
                i0, i1 = max(int(ci - rad_px) - 1, 0), min(int(ci + rad_px) + 2, n)
                j0, j1 = max(int(cj - rad_px) - 1, 0), min(int(cj + rad_px) + 2, n)
                if i0 >= i1 or j0 >= j1:
                    continue
                ii = np.arange(i0, i1, dtype=np.float32)[:, None]
                jj = np.arange(j0, j1, dtype=np.float32)[None, :]
                r = np.sqrt((ii - ci) ** 2 + (jj - cj) ** 2) / rad_px
                crown = np.where(r < 1, np.where(r > 0.72, 2600.0, np.where(r < 0.25, 60.0, 1800.0)), 0.0)
                root = np.where(r < 0.62, np.where(r < 0.14, 60.0, 1650.0), 0.0)
                np.maximum(crowns[i0:i1, j0:j1], crown, out=crowns[i0:i1, j0:j1])
                np.maximum(roots[i0:i1, j0:j1], root, out=roots[i0:i1, j0:j1])
        return crowns, roots

    def _skull_ring(self, thickness: float) -> _Layer:
        key = round(thickness / 0.0025)
        if key not in self._rings:
            inner = np.float32(1.0 - key * 0.0025)
            self._rings[key] = _Layer((self.r_head < 1.0) & (self.r_head > inner))
        return self._rings[key]

    def slice_hu(self, t: float) -> np.ndarray:
        """The HU image (float32) at relative height t in [0, 1]."""
        head_scale = np.float32(0.86 + 0.14 * min(t / 0.5, 1.0))
        img = (self.r_head < head_scale).astype(np.float32)
        img *= np.float32(1035.0)
        img -= np.float32(1000.0)  # soft tissue 35 HU inside the head, air outside

        if t > 0.59:  # skull: cortical ring at the edge of the head, thicker upwards
            self._skull_ring(0.045 + 0.03 * t).paint(img, _smooth_window(t, 0.62, 1.0), 1300.0)

        w = _smooth_window(t, 0.0, 0.40)
        self.mandible_cortex.paint(img, w, 1400.0)
        self.mandible_core.paint(img, w, 450.0)
        w = _smooth_window(t, 0.58, 0.74)
        self.maxilla_cortex.paint(img, w, 1100.0)
        self.maxilla_core.paint(img, w, 550.0)
        self.palate.paint(img, _smooth_window(t, 0.70, 0.74, edge=0.015), 900.0)

        self.roots.paint(img, max(_smooth_window(t, 0.28, 0.43, 0.02), _smooth_window(t, 0.57, 0.70, 0.02)))
        self.crowns.paint(img, _smooth_window(t, 0.44, 0.56, 0.015))

        self.airway.paint(img, _smooth_window(t, 0.0, 0.78), -1000.0)
        self.sinuses.paint(img, _smooth_window(t, 0.78, 0.95), -950.0)
        self.nasal.paint(img, _smooth_window(t, 0.74, 1.0), -900.0)
        w = _smooth_window(t, 0.0, 0.72)
        self.spine_shell.paint(img, w, 1200.0)
        self.spine_core.paint(img, w, 350.0)

        dy, dx = self.rng.integers(0, self._pad, size=2)
        img += self.noise[dy : dy + self.size, dx : dx + self.size]
        np.copyto(img, np.float32(-1000.0), where=self.outside_fov)
        return img


def cbct_series(
    n_slices: int = 500,
    size: int = 512,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^CBCT",
    seed: int = 0,
    bits_stored: int = 12,
    signed: bool = False,
    voxel_mm: float | None = None,
    series_number: int = 1,
    study_datetime: datetime = DEFAULT_STUDY_DATETIME,
    accession_number: str = "",
) -> Iterator[FileDataset]:
    """Yield one CT Image Storage instance per axial slice of a synthetic dental CBCT.

    Slices are 16-bit (`signed` picks PixelRepresentation) with `bits_stored` bits,
    isotropic voxels (default: a 160 mm field of view over `size` pixels), and
    ImagePositionPatient z increasing by SpacingBetweenSlices from the chin upwards.
    """
    if n_slices < 1 or size < 8:
        raise ValueError("need n_slices >= 1 and size >= 8")
    if not 12 <= bits_stored <= 16:  # fewer bits cannot hold air to enamel in HU
        raise ValueError("bits_stored must be between 12 and 16")
    study_uid = study_uid or _uid("cbct", "study", seed, patient_id)
    series_uid = series_uid or _uid("cbct", "series", seed, study_uid, series_number)
    voxel = float(voxel_mm) if voxel_mm else 160.0 / size
    intercept = 0.0 if signed else _CT_UNSIGNED_INTERCEPT
    lo, hi = _stored_range(bits_stored, signed)
    dtype = np.int16 if signed else np.uint16
    origin_xy = f"{-(size - 1) * voxel / 2:.6g}"
    z0 = -(n_slices - 1) * voxel / 2

    # Attributes shared by every slice are built (and validated) once; building ~80
    # elements through pydicom's setattr per slice would cost more than the pixels.
    template = Dataset()
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _set_patient_study(
        template,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        study_dt=study_datetime,
        study_description="CBCT maxilla and mandible (synthetic)",
        accession=accession_number,
    )
    _set_series_equipment(
        template,
        modality="CT",
        series_uid=series_uid,
        series_number=series_number,
        series_description=f"CBCT {voxel:.3g} mm",
        study_dt=study_datetime,
        model="Phantom CBCT",
    )
    template.BodyPartExamined = "JAW"
    template.PatientPosition = "HFS"
    template.FrameOfReferenceUID = _uid("cbct", "frame", series_uid)
    template.PositionReferenceIndicator = ""
    template.AcquisitionNumber = 1
    template.PatientOrientation = ""
    template.KVP = "90"
    template.XRayTubeCurrent = 8
    template.ExposureTime = 12000
    template.ConvolutionKernel = "STANDARD"
    template.DataCollectionDiameter = f"{size * voxel:.6g}"
    template.ReconstructionDiameter = f"{size * voxel:.6g}"
    template.GantryDetectorTilt = 0
    template.SliceThickness = f"{voxel:.6g}"
    template.SpacingBetweenSlices = f"{voxel:.6g}"
    template.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    template.PixelSpacing = [f"{voxel:.6g}", f"{voxel:.6g}"]
    template.SamplesPerPixel = 1
    template.PhotometricInterpretation = "MONOCHROME2"
    template.Rows = size
    template.Columns = size
    template.BitsAllocated = 16
    template.BitsStored = bits_stored
    template.HighBit = bits_stored - 1
    template.PixelRepresentation = 1 if signed else 0
    template.RescaleIntercept = f"{intercept:g}"
    template.RescaleSlope = "1"
    template.RescaleType = "HU"
    template.WindowCenter = "700"
    template.WindowWidth = "3000"
    template.WindowCenterWidthExplanation = "BONE"
    template.LossyImageCompression = "00"
    template.BurnedInAnnotation = "NO"

    phantom = _CbctPhantom(size, seed)
    logger.debug("generating %d CBCT slices of %d^2, series %s", n_slices, size, series_uid)
    for index in range(n_slices):
        t = index / (n_slices - 1) if n_slices > 1 else 0.5
        hu = phantom.slice_hu(t)
        hu -= np.float32(intercept)
        np.rint(hu, out=hu)
        np.clip(hu, lo, hi, out=hu)
        z = f"{z0 + index * voxel:.6g}"

        ds = _new_file_dataset(CTImageStorage, _uid("cbct", "sop", series_uid, index))
        _copy_elements(template, ds)
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [origin_xy, origin_xy, z]
        ds.SliceLocation = z
        ds.add_new(0x7FE00010, "OW", hu.astype(dtype).tobytes())
        yield ds


def write_cbct(folder: str | Path, n_slices: int = 500, size: int = 512, **kw: Any) -> list[Path]:
    """Write `cbct_series(...)` as slice_0001.dcm, ... in `folder`; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n_slices)))
    paths: list[Path] = []
    for index, ds in enumerate(cbct_series(n_slices, size, **kw), start=1):
        path = folder / f"slice_{index:0{width}d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CBCT slices to %s", len(paths), folder)
    return paths


# --------------------------------------------------------------------------------------
# Projection radiographs (intra-oral, panoramic)
# --------------------------------------------------------------------------------------

# Attenuation-like intensities on a 0..1 scale (1 = most attenuating, shown white).
_SOFT, _BONE, _DENTIN, _ENAMEL, _PULP, _METAL = 0.22, 0.45, 0.68, 0.86, 0.34, 0.98


def _paint_tooth(
    img: np.ndarray,
    cx: float,
    cej_y: float,
    width: float,
    crown_h: float,
    root_len: float,
    *,
    crown_up: bool,
    n_roots: int,
    filling: bool = False,
) -> None:
    """Paint one tooth (pixels) with its crown above (crown_up) or below the CEJ line."""
    rows, cols = img.shape
    sign = -1.0 if crown_up else 1.0  # direction from CEJ to the crown tip, in rows
    top = cej_y + sign * crown_h * 1.1
    bottom = cej_y - sign * root_len * 1.05
    i0, i1 = int(max(min(top, bottom) - 2, 0)), int(min(max(top, bottom) + 3, rows))
    j0, j1 = int(max(cx - width * 0.6 - 2, 0)), int(min(cx + width * 0.6 + 3, cols))
    if i0 >= i1 or j0 >= j1:
        return
    y = np.arange(i0, i1, dtype=np.float32)[:, None]
    x = np.arange(j0, j1, dtype=np.float32)[None, :]
    # s > 0 runs from the CEJ into the crown, s < 0 into the root.
    s = (y - cej_y) * sign
    dx = (x - cx) / (width / 2)

    crown_shape = (s >= 0) & (dx**2 + (s / crown_h) ** 4 < 1.0)
    enamel = crown_shape & ((dx**2 + ((s + 0.12 * crown_h) / (crown_h * 0.85)) ** 4 >= 1.0) | (s > crown_h * 0.6))
    depth = np.clip(-s / root_len, 0.0, 1.0)
    root_half = 0.5 * (1.0 - 0.75 * depth)  # roots taper towards the apex
    if n_roots == 1:
        root = (s < 0) & (np.abs(dx) < root_half * 1.4) & (-s < root_len)
    else:
        offset = 0.45 * (1 + 0.3 * depth)
        root = (s < 0) & (-s < root_len) & (
            (np.abs(dx - offset) < root_half * 0.8) | (np.abs(dx + offset) < root_half * 0.8)
        )
        root |= (s < 0) & (-s < root_len * 0.18) & (np.abs(dx) < 0.85)
    chamber = (np.abs(dx) < 0.42) & (s > -0.1 * root_len) & (s < crown_h * 0.5)
    if n_roots == 1:
        canal = np.abs(dx) < 0.12 * (1.0 - 0.6 * depth)
    else:
        canal = np.abs(np.abs(dx) - offset) < 0.1 * (1.0 - 0.6 * depth)
    pulp = chamber | ((s < 0) & (-s < root_len * 0.9) & canal)

    region = img[i0:i1, j0:j1]
    region[root | crown_shape] = _DENTIN
    region[enamel] = _ENAMEL
    region[pulp & (crown_shape | root)] = _PULP
    if filling:
        fill = crown_shape & (np.abs(dx) < 0.45) & (s > crown_h * 0.55)
        region[fill] = _METAL


def _trabecular(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Cheap bone texture: a few random sinusoid products, 0..1."""
    rows, cols = shape
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    tex = np.zeros(shape, dtype=np.float32)
    for _ in range(4):
        fx, fy = rng.uniform(0.5, 1.5, size=2) * (2 * np.pi / scale)
        px, py = rng.uniform(0, 2 * np.pi, size=2)
        tex += np.sin(x * fx + px) * np.sin(y * fy + py)
    return (tex / 8 + 0.5).astype(np.float32)


def _to_pixels(img: np.ndarray, rng: np.random.Generator, bits: int, noise: float) -> tuple[np.ndarray, int]:
    """Add noise, scale 0..1 to the stored range; returns (array, bits_stored)."""
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    if bits == 8:
        bits_stored, dtype = 8, np.uint8
    elif bits == 16:
        bits_stored, dtype = 12, np.uint16
    else:
        raise ValueError("bits_allocated must be 8 or 16")
    top = (1 << bits_stored) - 1
    return np.clip(np.rint(img * top), 0, top).astype(dtype), bits_stored


def _dx_dataset(
    *,
    sop_class: str,
    modality: str,
    pixels: np.ndarray,
    bits_stored: int,
    imager_spacing: float,
    seed: int,
    study_uid: str | None,
    series_uid: str | None,
    patient_id: str,
    patient_name: str,
    study_datetime: datetime,
    study_description: str,
    series_description: str,
    model: str,
    anatomic_region: Dataset,
    image_laterality: str,
    patient_orientation: list[str],
    positioner_type: str,
    kvp: str,
) -> FileDataset:
    """The DX-family attributes shared by intra-oral and panoramic images."""
    kind = modality.lower()
    study_uid = study_uid or _uid(kind, "study", seed, patient_id)
    series_uid = series_uid or _uid(kind, "series", seed, study_uid)
    ds = _new_file_dataset(sop_class, _uid(kind, "sop", series_uid, seed))
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _set_patient_study(
        ds,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        study_dt=study_datetime,
        study_description=study_description,
        accession="",
    )
    _set_series_equipment(
        ds,
        modality=modality,
        series_uid=series_uid,
        series_number=1,
        series_description=series_description,
        study_dt=study_datetime,
        model=model,
    )
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "JAW"
    ds.InstanceNumber = 1
    ds.PatientOrientation = patient_orientation
    ds.ImageLaterality = image_laterality
    ds.AnatomicRegionSequence = DicomSequence([anatomic_region])
    ds.PositionerType = positioner_type
    ds.KVP = kvp
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [f"{imager_spacing:g}", f"{imager_spacing:g}"]
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    # Bright = attenuating, so higher values mean less beam intensity.
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    top = (1 << bits_stored) - 1
    ds.WindowCenter = f"{(top + 1) // 2}"
    ds.WindowWidth = f"{top + 1}"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.add_new(0x7FE00010, "OB" if pixels.dtype.itemsize == 1 else "OW", pixels.tobytes())
    return ds


def intraoral_image(
    *,
    seed: int = 0,
    rows: int = 1000,
    cols: int = 1300,
    bits_allocated: int = 16,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^Intraoral",
    study_datetime: datetime = DEFAULT_STUDY_DATETIME,
) -> FileDataset:
    """A periapical radiograph of the lower left molar region (teeth 35-37).

    Digital Intra-Oral X-Ray Image Storage - For Presentation, MONOCHROME2,
    16-bit with 12 stored bits or 8-bit (`bits_allocated`).
    """
    rng = np.random.default_rng(seed)
    img = np.full((rows, cols), _SOFT, dtype=np.float32)
    # Alveolar bone below the crest, with a texture.
    crest = int(rows * 0.38)
    img[crest:] = _BONE * (0.85 + 0.3 * _trabecular((rows - crest, cols), rng, scale=rows / 25))
    # Mandibular canal: a darker band near the bottom.
    canal = slice(int(rows * 0.86), int(rows * 0.9))
    img[canal] *= 0.8
    tooth_w = cols / 3.6
    for k, (n_roots, filling) in enumerate([(1, False), (2, True), (2, False)]):
        cx = cols * (0.2 + 0.31 * k) + rng.uniform(-0.02, 0.02) * cols
        _paint_tooth(
            img,
            cx,
            cej_y=rows * 0.33,
            width=tooth_w * (0.8 if n_roots == 1 else 1.0),
            crown_h=rows * 0.22,
            root_len=rows * (0.5 if n_roots == 1 else 0.45),
            crown_up=True,
            n_roots=n_roots,
            filling=filling,
        )
    pixels, bits_stored = _to_pixels(img, rng, bits_allocated, noise=0.012)
    ds = _dx_dataset(
        sop_class=DigitalIntraOralXRayImageStorageForPresentation,
        modality="IO",
        pixels=pixels,
        bits_stored=bits_stored,
        imager_spacing=0.027,
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_datetime=study_datetime,
        study_description="Intraoral radiograph (synthetic)",
        series_description="Periapical 36",
        model="Phantom IO sensor",
        anatomic_region=_code("91609006", "SCT", "Mandible"),
        image_laterality="L",
        patient_orientation=["P", "F"],  # premolar to molars rightwards, crowns up
        positioner_type="NONE",
        kvp="70",
    )
    ds.PrimaryAnatomicStructureSequence = DicomSequence(
        [_code("866006002", "SCT", "Mandibular left first molar tooth")]
    )
    return ds


def panoramic_image(
    *,
    seed: int = 0,
    rows: int = 1400,
    cols: int = 2800,
    bits_allocated: int = 8,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    patient_name: str = "Synthetic^Panoramic",
    study_datetime: datetime = DEFAULT_STUDY_DATETIME,
) -> FileDataset:
    """A panoramic radiograph with 32 teeth, mandible, sinuses and a filling or two.

    Digital X-Ray Image Storage - For Presentation, Modality PX, 8-bit or 16-bit
    (12 stored) MONOCHROME2.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(rows, dtype=np.float32)[:, None]
    x = np.arange(cols, dtype=np.float32)[None, :]
    xn = (x - cols / 2) / (cols / 2)  # -1 .. 1
    img = np.full((rows, cols), 0.08, dtype=np.float32)
    # Face soft tissue.
    img += np.float32(_SOFT - 0.08) * ((np.abs(xn) < 0.97) & (y > rows * 0.04))
    occlusal = rows * 0.5 - rows * 0.06 * (1 - xn**2)  # the "smile" of the occlusal plane
    # Mandible: body between the alveolar crest and a curved lower border, rami at the sides.
    lower_border = rows * (0.86 - 0.1 * xn**2)
    mandible = (y > occlusal + rows * 0.06) & (y < lower_border) & (np.abs(xn) < 0.82)
    ramus = (np.abs(np.abs(xn) - 0.78) < 0.07) & (y > rows * 0.22) & (y < lower_border)
    # Maxilla: above the occlusal plane up to the sinus floor.
    maxilla = (y < occlusal - rows * 0.05) & (y > rows * 0.18) & (np.abs(xn) < 0.66)
    bone = mandible | ramus | maxilla
    texture = _trabecular((rows, cols), rng, scale=rows / 30)
    img = np.where(bone, np.float32(_BONE) * (0.85 + 0.3 * texture), img)
    cortex = mandible & (y > lower_border - rows * 0.035)
    img[cortex] = 0.62
    sinus = (((np.abs(xn) - 0.33) / 0.22) ** 2 + ((y - rows * 0.22) / (rows * 0.1)) ** 2) < 1
    img[sinus] *= 0.55
    nasal = ((xn / 0.1) ** 2 + ((y - rows * 0.12) / (rows * 0.1)) ** 2) < 1
    img[nasal] = 0.1
    # Vertebra ghost: a broad faint shadow in the middle.
    img += np.float32(0.06) * np.exp(-((xn / 0.06) ** 2)).astype(np.float32) * (y > rows * 0.3)

    # 16 teeth per jaw, widest at the molars, crowns meeting at the occlusal plane.
    widths = np.array([0.85, 0.75, 0.85, 0.9, 0.9, 1.3, 1.3, 1.2])
    unit = (cols * 0.64) / (2 * widths.sum())
    fillings = set(rng.choice(32, size=2, replace=False).tolist())
    tooth_index = 0
    for jaw_up, crown_up in (("upper", False), ("lower", True)):
        for side in (-1, 1):
            pos = 0.0
            for k, w in enumerate(widths):
                cx = cols / 2 + side * (pos + w * unit / 2)
                pos += w * unit
                xl = (cx - cols / 2) / (cols / 2)
                occ = rows * 0.5 - rows * 0.06 * (1 - xl**2)
                crown_h = rows * 0.075
                cej = occ - crown_h if not crown_up else occ + crown_h
                cej += rows * 0.012 * (1 if crown_up else -1)
                _paint_tooth(
                    img,
                    cx,
                    cej_y=cej,
                    width=w * unit * 0.92,
                    crown_h=crown_h,
                    root_len=rows * (0.16 if k < 5 else 0.13),
                    crown_up=crown_up,
                    n_roots=1 if k < 5 else 2,
                    filling=tooth_index in fillings and k >= 3,
                )
                tooth_index += 1
    pixels, bits_stored = _to_pixels(img, rng, bits_allocated, noise=0.01)
    return _dx_dataset(
        sop_class=DigitalXRayImageStorageForPresentation,
        modality="PX",
        pixels=pixels,
        bits_stored=bits_stored,
        imager_spacing=0.1,
        seed=seed,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        patient_name=patient_name,
        study_datetime=study_datetime,
        study_description="Panoramic radiograph (synthetic)",
        series_description="Panoramic",
        model="Phantom PAN",
        anatomic_region=_code("661005", "SCT", "Jaw region"),
        image_laterality="B",
        patient_orientation=["L", "F"],  # viewed facing the patient
        positioner_type="PANORAMIC",
        kvp="70",
    )
