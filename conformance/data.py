"""The suite's own test data: UIDs under a random root per run, names with a random token.

Built from ``gateway.synthetic`` (CBCT slices, intraoral and panoramic radiographs, no
patient data) and from the files pydicom ships (an uncompressed and a JPEG 2000 multi-frame
Enhanced MR, a JPEG 2000 MR slice, a Comprehensive SR), with every UID replaced, so that the
suite can run against a server that holds other data and never collides with an earlier run.

Studies (patient names start with ``CF<TOKEN>`` so wildcard queries find only this run's):

- **A** (``main``): patient CF<TOKEN>A^ANNA, 2024-01-15 09:30, accession, description,
  referring physician; series A1: 3 CBCT slices (CT, 64²), series A2: 1 intraoral image (IO).
- **B** (``other``): patient CF<TOKEN>B^BERND, 2023-06-10 14:00; series B1: 1 panoramic (PX);
  series B2: the 10-frame Enhanced MR (uncompressed); series B3: JPEG 2000 lossless MR slice
  and 10-frame JPEG 2000 Enhanced MR (compressed, for ``transfer-syntax=*``).
- **C** (``ohif``): patient OH<TOKEN>^CARLA, 2 CBCT slices: opened the way OHIF opens a study,
  then a Comprehensive SR is stored into it as OHIF stores measurements.
- STOW and DIMSE suites make their own small studies (:meth:`RunData.small_study`).
"""
from __future__ import annotations

import copy
import io
import itertools
import logging
import random
import string
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from gateway.synthetic import cbct_series, intraoral_image, panoramic_image

logger = logging.getLogger(__name__)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test set (found without any download), else of pydicom-data."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not among pydicom's test files")
    return Path(path)


@dataclass
class Instance:
    ds: Dataset
    data: bytes  # Part 10

    @property
    def study(self) -> str:
        return str(self.ds.StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.ds.SeriesInstanceUID)

    @property
    def sop(self) -> str:
        return str(self.ds.SOPInstanceUID)

    @property
    def sop_class(self) -> str:
        return str(self.ds.SOPClassUID)

    @property
    def transfer_syntax(self) -> str:
        return str(self.ds.file_meta.TransferSyntaxUID)

    @property
    def frames(self) -> int:
        return int(self.ds.get("NumberOfFrames", 1) or 1)

    @property
    def path(self) -> str:
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop}"

    def frame_bytes(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: uncompressed bytes, or the encapsulated frame."""
        ds = self.ds
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            from pydicom.encaps import generate_frames

            return list(generate_frames(ds.PixelData, number_of_frames=self.frames))[number - 1]
        size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
        return bytes(ds.PixelData[(number - 1) * size: number * size])

    def decoded_frame(self, number: int) -> bytes:
        """Frame ``number`` decoded to native little-endian bytes."""
        arr = self.ds.pixel_array
        if self.frames > 1:
            arr = arr[number - 1]
        return arr.astype(arr.dtype.newbyteorder("<")).tobytes()

    @property
    def uncompressed_frame_size(self) -> int:
        ds = self.ds
        return int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8


@dataclass
class Study:
    uid: str
    patient_id: str
    patient_name: str
    instances: list[Instance] = field(default_factory=list)

    def series(self) -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = {}
        for inst in self.instances:
            out.setdefault(inst.series, []).append(inst)
        return out

    @property
    def modalities(self) -> set[str]:
        return {str(i.ds.Modality) for i in self.instances}


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class RunData:
    """UIDs and data sets of one run."""

    def __init__(self, seed: int | None = None):
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self.root = f"2.25.{rng.randrange(10**17, 10**18)}"
        self.token = "".join(rng.choice(string.ascii_uppercase) for _ in range(6))
        self._counter = itertools.count(1)
        self.created_studies: list[str] = []  # for clean-up, in creation order

    def uid(self) -> str:
        return f"{self.root}.{next(self._counter)}"

    @property
    def name_prefix(self) -> str:
        return f"CF{self.token}"

    def patient_id(self, suffix: str) -> str:
        return f"CF-{self.token}-{suffix}"

    def _study(self, key: str, patient_name: str) -> Study:
        study = Study(self.uid(), self.patient_id(key), patient_name)
        self.created_studies.append(study.uid)
        return study

    # --- building blocks --------------------------------------------------------------
    def _retag(self, ds: Dataset, study: Study, series_uid: str, *, when: datetime, **extra) -> Instance:
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = self.uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.PatientID = study.patient_id
        ds.PatientName = study.patient_name
        ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        return Instance(ds, part10(ds))

    def _cbct(self, study: Study, n: int, *, when: datetime, size: int = 64, series_number: int = 1,
              **extra) -> list[Instance]:
        series_uid = self.uid()
        out = []
        for ds in cbct_series(n, size, study_uid=study.uid, series_uid=series_uid, patient_id=study.patient_id,
                              patient_name=study.patient_name, study_datetime=when, series_number=series_number):
            out.append(self._retag(ds, study, series_uid, when=when, **extra))
        return out

    def _from_file(self, name: str, study: Study, series_uid: str, *, when: datetime, **extra) -> Instance:
        ds = pydicom.dcmread(pydicom_file(name))
        return self._retag(ds, study, series_uid, when=when, **extra)

    # --- the shared studies -------------------------------------------------------------
    @cached_property
    def main(self) -> Study:
        """Study A: CBCT series (3 slices) + intraoral series."""
        when = datetime(2024, 1, 15, 9, 30, 0)
        study = self._study("A", f"{self.name_prefix}A^ANNA")
        common = dict(AccessionNumber=f"ACC{self.token}", StudyDescription=f"Conformance {self.token} CBCT",
                      ReferringPhysicianName="REFERRER^RITA", StudyID="A1", PatientBirthDate="19800101",
                      PatientSex="F", PatientAge="044Y")
        study.instances += self._cbct(study, 3, when=when, **common)
        io_ds = intraoral_image(rows=80, cols=104, study_uid=study.uid, series_uid=self.uid(),
                                patient_id=study.patient_id, patient_name=study.patient_name, study_datetime=when)
        io_ds.SeriesNumber = 2
        study.instances.append(self._retag(io_ds, study, str(io_ds.SeriesInstanceUID), when=when, **common))
        return study

    @cached_property
    def other(self) -> Study:
        """Study B: panoramic, uncompressed multi-frame, JPEG 2000 single- and multi-frame."""
        when = datetime(2023, 6, 10, 14, 0, 0)
        study = self._study("B", f"{self.name_prefix}B^BERND")
        common = dict(AccessionNumber=f"ACCB{self.token}", StudyDescription=f"Conformance {self.token} other",
                      StudyID="B1", PatientSex="M", PatientBirthDate="19700707")
        px = panoramic_image(rows=64, cols=128, study_uid=study.uid, series_uid=self.uid(),
                             patient_id=study.patient_id, patient_name=study.patient_name, study_datetime=when)
        px.SeriesNumber = 1
        study.instances.append(self._retag(px, study, str(px.SeriesInstanceUID), when=when, **common))
        study.instances.append(self._from_file("emri_small.dcm", study, self.uid(), when=when, SeriesNumber=2,
                                               **common))
        compressed_series = self.uid()
        study.instances.append(self._from_file("MR_small_jp2klossless.dcm", study, compressed_series, when=when,
                                               SeriesNumber=3, InstanceNumber=1, **common))
        study.instances.append(self._from_file("emri_small_jpeg_2k_lossless.dcm", study, compressed_series,
                                               when=when, SeriesNumber=3, InstanceNumber=2, **common))
        return study

    @cached_property
    def ohif(self) -> Study:
        """Study C: what OHIF opens (2 CBCT slices)."""
        when = datetime(2024, 3, 1, 8, 0, 0)
        study = self._study("C", f"OH{self.token}^CARLA")
        study.instances += self._cbct(study, 2, when=when, StudyDescription=f"OHIF {self.token}",
                                      AccessionNumber=f"ACCC{self.token}")
        return study

    def measurement(self, study: Study) -> Instance:
        """A Comprehensive SR in ``study``, as OHIF stores measurements."""
        when = datetime(2024, 3, 1, 8, 5, 0)
        return self._from_file("test-SR.dcm", study, self.uid(), when=when, SeriesNumber=99, Modality="SR")

    # --- small studies of the STOW and DIMSE suites ----------------------------------------
    def small_study(self, key: str, n: int = 1, *, modality_name: str = "STOW") -> Study:
        when = datetime(2022, 2, 2, 12, 0, 0)
        study = self._study(key, f"{modality_name}{self.token}^{key}")
        study.instances += self._cbct(study, n, when=when, size=16, StudyDescription=f"{modality_name} {key}")
        return study

    @cached_property
    def dimse(self) -> Study:
        """The DIMSE suite's study: 2 CT slices, and a JPEG 2000 MR slice in a second series."""
        when = datetime(2022, 5, 5, 10, 0, 0)
        study = self._study("DM", f"DIMSE{self.token}^DORA")
        study.instances += self._cbct(study, 2, when=when, size=16, StudyDescription=f"DIMSE {self.token}")
        study.instances.append(self._from_file("MR_small_jp2klossless.dcm", study, self.uid(), when=when,
                                               SeriesNumber=2, StudyDescription=f"DIMSE {self.token}"))
        return study

    def variant(self, instance: Instance, **changes) -> Instance:
        """The same SOP Instance UID with other content (a conflicting duplicate)."""
        ds = copy.deepcopy(instance.ds)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        return Instance(ds, part10(ds))


__all__ = ["Instance", "RunData", "Study", "pydicom_file", "part10"]
