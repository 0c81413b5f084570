import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from gateway import synthetic

N_SLICES, SIZE = 8, 64

# Type 1 and 2 attributes of the CT Image IOD modules the generator fills in.
CT_REQUIRED = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "Modality", "SeriesInstanceUID", "SeriesNumber", "PatientPosition",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer",
    "InstanceNumber", "PatientOrientation",
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData",
    "ImageType", "RescaleIntercept", "RescaleSlope", "KVP", "AcquisitionNumber",
    "SOPClassUID", "SOPInstanceUID",
]


@pytest.fixture(scope="module")
def cbct_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cbct")
    return synthetic.write_cbct(folder, N_SLICES, SIZE)


@pytest.fixture(scope="module")
def cbct(cbct_files):
    return [pydicom.dcmread(p) for p in cbct_files]


def test_write_cbct_names_and_part10_files(cbct_files):
    assert [p.name for p in cbct_files] == [f"slice_{i:04d}.dcm" for i in range(1, N_SLICES + 1)]
    for path in cbct_files:
        head = path.read_bytes()[:132]
        assert head[:128] == b"\x00" * 128
        assert head[128:] == b"DICM"


def test_file_meta_matches_dataset(cbct):
    for ds in cbct:
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID.is_valid
        assert meta.FileMetaInformationVersion == b"\x00\x01"
        assert meta.FileMetaInformationGroupLength > 0
        pydicom.dataset.validate_file_meta(meta, enforce_standard=True)
        assert not ds.original_encoding[0]  # explicit VR
        assert ds.original_encoding[1]  # little endian


def test_required_ct_attributes_present(cbct):
    for ds in cbct:
        missing = [kw for kw in CT_REQUIRED if kw not in ds]
        assert not missing
        assert ds.Modality == "CT"
        assert ds.BodyPartExamined == "JAW"
        assert ds.Manufacturer == "Synthetic"
        assert ds.PatientIdentityRemoved == "YES"


def test_pixels_shape_dtype_and_range(cbct):
    for ds in cbct:
        arr = ds.pixel_array
        assert arr.shape == (SIZE, SIZE)
        assert arr.dtype == np.uint16
        assert ds.BitsAllocated == 16 and ds.BitsStored == 12 and ds.HighBit == 11
        assert arr.max() < 4096
        hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert hu[0, 0] == pytest.approx(-1000, abs=1)  # outside the reconstruction circle
    # Something denser than soft tissue (bone, teeth) exists somewhere in the volume.
    assert max(int(ds.pixel_array.max()) for ds in cbct) + float(cbct[0].RescaleIntercept) > 1000


def test_signed_variant():
    ds = next(synthetic.cbct_series(2, 32, signed=True, bits_stored=12))
    ds = pydicom.dcmread(io.BytesIO(synthetic.to_bytes(ds)))
    assert ds.PixelRepresentation == 1
    arr = ds.pixel_array
    assert arr.dtype == np.int16
    assert arr.min() >= -2048 and arr.max() <= 2047
    assert float(ds.RescaleIntercept) == 0


def test_geometry_z_increases_by_spacing(cbct):
    spacing = float(cbct[0].SpacingBetweenSlices)
    assert spacing > 0
    assert float(cbct[0].SliceThickness) == pytest.approx(spacing)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in cbct])
    steps = np.diff(positions[:, 2])
    assert np.all(steps > 0)
    assert steps == pytest.approx(np.full(N_SLICES - 1, spacing), abs=1e-4)
    assert np.all(positions[:, :2] == positions[0, :2])
    for ds in cbct:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert [ds.InstanceNumber for ds in cbct] == list(range(1, N_SLICES + 1))


def test_uids_unique_per_slice_and_shared_per_series(cbct):
    sops = [ds.SOPInstanceUID for ds in cbct]
    assert len(set(sops)) == N_SLICES
    assert len({ds.StudyInstanceUID for ds in cbct}) == 1
    assert len({ds.SeriesInstanceUID for ds in cbct}) == 1
    assert len({ds.FrameOfReferenceUID for ds in cbct}) == 1
    uids = set(sops) | {cbct[0].StudyInstanceUID, cbct[0].SeriesInstanceUID, cbct[0].FrameOfReferenceUID}
    assert len(uids) == N_SLICES + 3
    for uid in uids:
        assert pydicom.uid.UID(uid).is_valid


def test_deterministic_per_seed():
    first = [synthetic.to_bytes(ds) for ds in synthetic.cbct_series(3, 32, seed=7)]
    again = [synthetic.to_bytes(ds) for ds in synthetic.cbct_series(3, 32, seed=7)]
    assert first == again
    other = list(synthetic.cbct_series(3, 32, seed=8))
    parsed = [pydicom.dcmread(io.BytesIO(b)) for b in first]
    assert parsed[0].StudyInstanceUID != other[0].StudyInstanceUID
    assert {d.SOPInstanceUID for d in parsed}.isdisjoint({d.SOPInstanceUID for d in other})


def test_given_uids_and_patient_are_used():
    series = list(
        synthetic.cbct_series(
            2, 16, study_uid="1.2.3.4", series_uid="1.2.3.4.5", patient_id="P-9", patient_name="Test^Name"
        )
    )
    assert {ds.StudyInstanceUID for ds in series} == {"1.2.3.4"}
    assert {ds.SeriesInstanceUID for ds in series} == {"1.2.3.4.5"}
    assert series[0].PatientID == "P-9"
    assert str(series[0].PatientName) == "Test^Name"
    # Two series in one study get different instance UIDs.
    other = list(synthetic.cbct_series(2, 16, study_uid="1.2.3.4", series_uid="1.2.3.4.6"))
    assert {d.SOPInstanceUID for d in series}.isdisjoint({d.SOPInstanceUID for d in other})


def test_yielded_datasets_do_not_share_elements():
    a, b = synthetic.cbct_series(2, 16)
    a.PatientName = "Changed^Name"
    a.ImageType[0] = "DERIVED"
    assert str(b.PatientName) == "Synthetic^CBCT"
    assert b.ImageType[0] == "ORIGINAL"


@pytest.mark.parametrize("bits, dtype", [(16, np.uint16), (8, np.uint8)])
def test_intraoral_image(bits, dtype):
    ds = synthetic.intraoral_image(rows=100, cols=130, bits_allocated=bits, seed=3)
    back = pydicom.dcmread(io.BytesIO(synthetic.to_bytes(ds)))
    assert back.SOPClassUID == DigitalIntraOralXRayImageStorageForPresentation
    assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID
    assert back.Modality == "IO"
    assert back.PresentationIntentType == "FOR PRESENTATION"
    assert back.PhotometricInterpretation == "MONOCHROME2"
    assert back.BitsAllocated == bits
    assert back.BitsStored == (12 if bits == 16 else 8)
    arr = back.pixel_array
    assert arr.shape == (100, 130) and arr.dtype == dtype
    assert arr.max() < 2**back.BitsStored
    assert back.AnatomicRegionSequence[0].CodingSchemeDesignator == "SCT"
    assert back.PrimaryAnatomicStructureSequence[0].CodeValue


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (16, np.uint16)])
def test_panoramic_image(bits, dtype):
    ds = synthetic.panoramic_image(rows=140, cols=280, bits_allocated=bits)
    back = pydicom.dcmread(io.BytesIO(synthetic.to_bytes(ds)))
    assert back.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert back.Modality == "PX"
    arr = back.pixel_array
    assert arr.shape == (140, 280) and arr.dtype == dtype


def test_projection_images_stable_per_seed_and_distinct_uids():
    a = synthetic.intraoral_image(rows=50, cols=60, seed=1)
    b = synthetic.intraoral_image(rows=50, cols=60, seed=1)
    c = synthetic.intraoral_image(rows=50, cols=60, seed=2)
    assert synthetic.to_bytes(a) == synthetic.to_bytes(b)
    assert a.SOPInstanceUID != c.SOPInstanceUID
    pano = synthetic.panoramic_image(rows=70, cols=140, seed=1)
    assert pano.SOPInstanceUID != a.SOPInstanceUID
    assert pano.StudyInstanceUID != a.StudyInstanceUID


def test_to_bytes_accepts_a_plain_dataset():
    src = synthetic.intraoral_image(rows=20, cols=20)
    plain = Dataset()
    plain.update(src)
    data = synthetic.to_bytes(plain)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SOPInstanceUID == src.SOPInstanceUID


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        next(synthetic.cbct_series(0, 64))
    with pytest.raises(ValueError):
        next(synthetic.cbct_series(2, 64, bits_stored=17))
    with pytest.raises(ValueError):
        synthetic.intraoral_image(rows=10, cols=10, bits_allocated=12)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_reports_no_errors(tmp_path, cbct_files):
    paths = [cbct_files[N_SLICES // 2]]
    for name, ds in [
        ("io.dcm", synthetic.intraoral_image(rows=100, cols=130)),
        ("px.dcm", synthetic.panoramic_image(rows=140, cols=280)),
    ]:
        path = tmp_path / name
        path.write_bytes(synthetic.to_bytes(ds))
        paths.append(path)
    for path in paths:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
        report = result.stdout + result.stderr
        assert "Error" not in report, report
