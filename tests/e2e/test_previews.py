"""Previews and thumbnails end to end: instances stored over DICOMweb, the previews job run by
the server's own worker, the stream fetched over HTTP and decoded slice by slice with glymur."""
from __future__ import annotations

import io
import json
import struct
import time

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

from gateway.imaging.jpeg2000 import bin_pixels
from gateway.synthetic import cbct_series, intraoral_image, to_bytes
from tests.conftest import ServerProcess
from tests.helpers import multipart_body, multipart_content_type

SETTLE = 1.0
LOSSLESS = "lossless-clinic"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    clinics = json.dumps([{"clinic": LOSSLESS, "compression_ratio": 1, "binning": 1}])
    srv = ServerProcess(tmp_path_factory.mktemp("previews") / "data", env={
        "GATEWAY_PREVIEWS__ENABLED": "true", "GATEWAY_PREVIEWS__SETTLE_SECONDS": str(SETTLE),
        "GATEWAY_PREVIEWS__POLL_INTERVAL": "0.2", "GATEWAY_PREVIEWS__CLINICS": clinics,
        "GATEWAY_INGEST__DUPLICATE_POLICY": "replace"}).start()
    yield srv
    srv.stop()


def stow(gateway, datasets, token: str | None = None) -> None:
    session = gateway.session(token) if token else gateway.http
    response = session.post(gateway.dicomweb + "/studies", data=multipart_body([to_bytes(d) for d in datasets], "pv"),
                            headers={"Content-Type": multipart_content_type("pv"), "Accept": "application/dicom+json"},
                            timeout=120)
    assert response.status_code == 200, response.text[:500]


def series_url(gateway, study: str, series: str) -> str:
    return f"{gateway.url}/api/v1/studies/{study}/series/{series}"


def wait_ready(session, base: str, *, version: str | None = None, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = session.get(base + "/preview/status", timeout=10).json()
        if status["state"] == "ready" and status["version"] != version and not status["updating"]:
            return status
        assert status["state"] != "failed", status
        time.sleep(0.2)
    raise AssertionError(f"previews not ready: {status}")


def parse_stream(data: bytes) -> tuple[dict, list[bytes]]:
    """The README's format, read without the server's code."""
    magic, length = struct.unpack("<4sI", data[:8])
    assert magic == b"DPV1"
    header = json.loads(data[8:8 + length])
    start = 8 + length
    return header, [data[start + s["offset"]:start + s["offset"] + s["length"]] for s in header["slices"]]


def glymur_decode(codestream: bytes, tmp_path) -> np.ndarray:
    import glymur

    path = tmp_path / f"slice-{time.monotonic_ns()}.j2k"
    path.write_bytes(codestream)
    return glymur.Jp2k(str(path))[:]


def make_ct(slices: int = 12, size: int = 128, **kw) -> tuple[str, str, list]:
    study, series = generate_uid(), generate_uid()
    datasets = list(cbct_series(slices, size, study_uid=study, series_uid=series, **kw))
    for number, ds in enumerate(reversed(datasets), start=1):  # InstanceNumber against the slice order
        ds.InstanceNumber = number
    return study, series, datasets


@pytest.fixture(scope="module")
def ct(gateway):
    study, series, datasets = make_ct(signed=True)
    stow(gateway, datasets)
    status = wait_ready(gateway.http, series_url(gateway, study, series))
    return study, series, datasets, status


def test_a_stored_series_gets_a_preview_whose_slices_decode_close_to_the_binned_source(gateway, ct, tmp_path):
    study, series, datasets, status = ct
    assert set(status["objects"]) >= {"preview", "thumbnail/256.jpeg", "thumbnail/512.png"}
    response = gateway.http.get(series_url(gateway, study, series) + "/preview", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.dental-gateway.preview"
    assert response.headers["X-Non-Diagnostic"] == "true"
    assert response.headers["ETag"] == f'"{status["version"]}"' and "private" in response.headers["Cache-Control"]
    header, codestreams = parse_stream(response.content)
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = by_z[0]
    assert header["non_diagnostic"] is True and header["version"] == status["version"]
    assert (header["rows"], header["columns"], header["slice_count"]) == (64, 64, len(datasets))
    assert header["binning"] == 2 and header["compression_ratio"] == 10 and header["lossless"] is False
    assert header["pixel_spacing"] == pytest.approx([2 * float(v) for v in first.PixelSpacing])
    assert header["orientation"] == pytest.approx([float(v) for v in first.ImageOrientationPatient])
    assert header["rescale_slope"] == float(first.RescaleSlope)
    assert header["rescale_intercept"] == float(first.RescaleIntercept)
    assert header["slice_spacing"] == pytest.approx(abs(float(by_z[1].ImagePositionPatient[2]) -
                                                        float(first.ImagePositionPatient[2])))
    assert header["window"]["width"] > 0 and header["skipped"] == []
    assert [s["sop_uid"] for s in header["slices"]] == [ds.SOPInstanceUID for ds in by_z]
    assert [s["position"] for s in header["slices"]] == \
        [pytest.approx([float(v) for v in ds.ImagePositionPatient]) for ds in by_z]
    for ds, codestream in zip(by_z, codestreams):
        decoded = glymur_decode(codestream, tmp_path).astype(np.int32) + header["value_offset"]
        source = bin_pixels(ds.pixel_array, 2).astype(np.int32)
        error = np.abs(decoded - source)
        # Ratio 10 of 16-bit samples is 1.6 bits per pixel: small, noisy 64² slices lose ~1 % on average.
        psnr = 20 * np.log10(np.ptp(source) / np.sqrt(np.mean(error.astype(np.float64) ** 2)))
        assert error.mean() < 0.02 * np.ptp(source) and psnr > 30, (error.mean(), psnr, np.ptp(source))
    assert len(response.content) * 4 < sum(len(to_bytes(d)) for d in datasets)


def test_the_lossless_setting_of_a_clinic_gives_the_exact_stored_values(gateway, tmp_path):
    token = gateway.token_for(clinic=LOSSLESS, roles=("doctor",))
    study, series, datasets = make_ct(slices=4, size=64)
    stow(gateway, datasets, token)
    session = gateway.session(token)
    wait_ready(session, series_url(gateway, study, series))
    header, codestreams = parse_stream(session.get(series_url(gateway, study, series) + "/preview", timeout=30).content)
    assert header["lossless"] is True and header["binning"] == 1 and header["rows"] == 64
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    for ds, codestream in zip(by_z, codestreams):
        assert np.array_equal(glymur_decode(codestream, tmp_path).astype(np.int32) + header["value_offset"],
                              ds.pixel_array.astype(np.int32))


def test_slice_ranges_and_byte_ranges_of_the_stream(gateway, ct):
    study, series, _, _ = ct
    base = series_url(gateway, study, series) + "/preview"
    whole = gateway.http.get(base, timeout=30).content
    header, codestreams = parse_stream(whole)
    part = gateway.http.get(base, params={"slices": "3-5"}, timeout=30)
    assert part.status_code == 200 and int(part.headers["Content-Length"]) == len(part.content)
    sub, sub_streams = parse_stream(part.content)
    assert sub["slice_range"] == [3, 5] and sub["slice_count"] == 3
    assert [s["sop_uid"] for s in sub["slices"]] == [s["sop_uid"] for s in header["slices"][2:5]]
    assert sub_streams == codestreams[2:5]
    # A viewer reads the header with one range, then any slice with another.
    prefix = gateway.http.get(base, headers={"Range": "bytes=0-7"}, timeout=30)
    assert prefix.status_code == 206 and prefix.content == whole[:8]
    assert prefix.headers["Content-Range"] == f"bytes 0-7/{len(whole)}"
    length = struct.unpack("<I", prefix.content[4:8])[0]
    entry = header["slices"][7]
    start = 8 + length + entry["offset"]
    one = gateway.http.get(base, headers={"Range": f"bytes={start}-{start + entry['length'] - 1}"}, timeout=30)
    assert one.status_code == 206 and one.content == codestreams[7]
    assert gateway.http.get(base, headers={"Range": f"bytes={len(whole)}-"}, timeout=30).status_code == 416
    bad = gateway.http.get(base, params={"slices": "0-99"}, timeout=30)
    assert bad.status_code == 400 and f"1-{len(codestreams)}" in bad.json()["message"]
    assert gateway.http.get(base, params={"slice": "1"}, timeout=30).status_code == 400  # unknown parameter
    etag = gateway.http.get(base, timeout=30).headers["ETag"]
    assert gateway.http.get(base, headers={"If-None-Match": etag}, timeout=30).status_code == 304


def test_thumbnails_decode_to_the_asked_size(gateway, ct):
    study, series, _, _ = ct
    base = series_url(gateway, study, series) + "/thumbnail"
    for size in (256, 512):
        for image_format, pil in (("jpeg", "JPEG"), ("png", "PNG")):
            response = gateway.http.get(base, params={"size": size, "format": image_format}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"] == f"image/{image_format}"
            assert response.headers["X-Non-Diagnostic"] == "true"
            assert "max-age=604800" in response.headers["Cache-Control"]
            image = Image.open(io.BytesIO(response.content))
            assert image.format == pil and max(image.size) == size
            assert np.asarray(image).std() > 5  # the windowed middle slice, not a blank square
    assert gateway.http.get(base, params={"size": 300}, timeout=30).status_code == 400


def test_a_2d_image_gets_thumbnails_as_it_is(gateway):
    ds = intraoral_image()
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    stow(gateway, [ds])
    wait_ready(gateway.http, series_url(gateway, study, series))
    response = gateway.http.get(series_url(gateway, study, series) + "/thumbnail", params={"size": 512}, timeout=30)
    image = Image.open(io.BytesIO(response.content))
    rows, columns = int(ds.Rows), int(ds.Columns)
    assert max(image.size) == 512 and abs(image.size[0] / image.size[1] - columns / rows) < 0.02


def test_not_made_yet_is_a_404_with_the_jobs_progress(gateway):
    study, series, datasets = make_ct(slices=3, size=64)
    stow(gateway, datasets)
    response = gateway.http.get(series_url(gateway, study, series) + "/preview", timeout=30)
    assert response.status_code == 404
    body = response.json()
    assert "not generated yet" in body["message"]
    assert body["errors"]["derived"]["state"] in ("pending", "running")
    wait_ready(gateway.http, series_url(gateway, study, series))


def test_progress_events_end_with_ready(gateway):
    study, series, datasets = make_ct(slices=6, size=64)
    stow(gateway, datasets)
    events = []
    with gateway.http.get(series_url(gateway, study, series) + "/preview/events", stream=True, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                events.append(line[7:])
            if events and events[-1] == "ready":
                break
    assert events[0] == "status" and events[-1] == "ready"


def test_a_replaced_instance_makes_a_new_version_and_the_old_signed_url_stops(gateway, tmp_path):
    study, series, datasets = make_ct(slices=4, size=64)
    stow(gateway, datasets)
    base = series_url(gateway, study, series)
    old = wait_ready(gateway.http, base)
    signed = gateway.http.post(gateway.url + "/api/v1/signed-urls",
                               json={"study": study, "series": series, "derived": "preview"}, timeout=30)
    assert signed.status_code == 201, signed.text
    url = signed.json()["url"]
    assert f"/preview/v/{old['version']}?" in url
    first = requests.get(url, timeout=30)  # no Authorization header: a CDN can fetch it
    assert first.status_code == 200 and "public" in first.headers["Cache-Control"]
    changed = datasets[1]
    changed.PixelData = (changed.pixel_array // 2).astype(changed.pixel_array.dtype).tobytes()
    stow(gateway, [changed])
    new = wait_ready(gateway.http, base, version=old["version"])
    assert new["version"] != old["version"]
    gone = requests.get(url, timeout=30)
    assert gone.status_code == 404 and new["version"] in gone.json()["message"]
    header, _ = parse_stream(gateway.http.get(base + "/preview", timeout=30).content)
    assert header["version"] == new["version"]


def test_a_corrupt_instance_is_dead_lettered_and_the_rest_of_the_series_completes(gateway):
    study, series, datasets = make_ct(slices=5, size=64)
    broken = datasets[2]
    broken.file_meta.TransferSyntaxUID = JPEG2000Lossless
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream" * 4])
    broken["PixelData"].VR = "OB"
    stow(gateway, datasets)
    base = series_url(gateway, study, series)
    status = wait_ready(gateway.http, base)
    assert [s["sop_uid"] for s in status["skipped"]] == [broken.SOPInstanceUID]
    header, codestreams = parse_stream(gateway.http.get(base + "/preview", timeout=30).content)
    assert header["slice_count"] == 4 and len(codestreams) == 4
    assert broken.SOPInstanceUID not in [s["sop_uid"] for s in header["slices"]]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failed = gateway.http.get(gateway.url + "/api/v1/admin/jobs",
                                  params={"kind": "preview-instance", "status": "failed"}, timeout=30).json()
        mine = [j for j in failed["items"] if j["payload"]["sop_uid"] == broken.SOPInstanceUID]
        if mine:
            assert "cannot be decoded" in mine[0]["last_error"]
            return
        time.sleep(0.3)
    raise AssertionError(f"no dead letter for {broken.SOPInstanceUID}: {failed}")


def test_another_clinic_sees_nothing_of_the_derived_objects(gateway, ct):
    study, series, _, status = ct
    stranger = gateway.session(gateway.token_for(clinic="elsewhere", roles=("doctor",)))
    base = series_url(gateway, study, series)
    for path in ("/preview", "/preview/status", "/preview/events", "/thumbnail", "/snapshot",
                 f"/preview/v/{status['version']}", f"/thumbnail/v/{status['version']}",
                 f"/snapshot/v/{status['version']}"):
        response = stranger.get(base + path, timeout=30)
        assert response.status_code == 404, (path, response.status_code)
        assert "not generated" not in response.text  # nothing said about the series
    signed = stranger.post(gateway.url + "/api/v1/signed-urls",
                           json={"study": study, "series": series, "derived": "thumbnail"}, timeout=30)
    assert signed.status_code == 404


def test_a_revoked_share_stops_its_signed_thumbnail_url(gateway, ct):
    study, series, _, _ = ct
    share = gateway.http.post(gateway.url + "/api/v1/shares", json={
        "study": study, "targets": [{"type": "clinic", "id": "lab-7"}], "permissions": ["view"]}, timeout=30)
    assert share.status_code == 201, share.text
    lab = gateway.session(gateway.token_for(clinic="lab-7", roles=("lab",)))
    signed = lab.post(gateway.url + "/api/v1/signed-urls",
                      json={"study": study, "series": series, "derived": "thumbnail", "size": 512, "format": "png"},
                      timeout=30)
    assert signed.status_code == 201, signed.text
    url = signed.json()["url"]
    assert requests.get(url, timeout=30).status_code == 200
    revoked = gateway.http.delete(f"{gateway.url}/api/v1/shares/{share.json()['shares'][0]['id']}", timeout=30)
    assert revoked.status_code in (200, 204)
    assert requests.get(url, timeout=30).status_code == 404


def test_deleting_the_study_deletes_its_derived_objects(gateway):
    study, series, datasets = make_ct(slices=3, size=64)
    stow(gateway, datasets)
    base = series_url(gateway, study, series)
    wait_ready(gateway.http, base)
    blobs = gateway.data_dir / "blobs"
    derived = [p for p in blobs.rglob("*") if p.is_file() and f"/derived/default/{study}/" in str(p)]
    assert derived
    assert gateway.http.delete(f"{gateway.dicomweb}/studies/{study}", timeout=30).status_code in (200, 204)
    assert not any(p.exists() for p in derived)
    assert gateway.http.get(base + "/preview/status", timeout=30).status_code == 404


def test_the_python_client_reads_the_preview_into_a_volume(gateway, ct):
    from proprietary.client import GatewayClient

    study, series, datasets, status = ct
    client = GatewayClient(gateway.url, gateway.token)
    volume = client.preview(study, series)
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert volume.stored.shape == (len(datasets), 64, 64) and volume.header["version"] == status["version"]
    source = np.stack([bin_pixels(ds.pixel_array, 2) for ds in by_z]).astype(np.int32)
    assert np.abs(volume.stored - source).mean() < 0.02 * np.ptp(source)
    hu = source * float(by_z[0].RescaleSlope) + float(by_z[0].RescaleIntercept)
    assert np.abs(volume.values - hu).mean() < 0.02 * np.ptp(hu)
    part = client.preview(study, series, slices="2-3")
    assert np.array_equal(part.stored, volume.stored[1:3])
    assert client.preview_status(study, series)["state"] == "ready"


def test_the_3d_snapshot_differs_between_presets_and_is_not_blank(gateway, ct):
    study, series, datasets, _ = ct
    base = series_url(gateway, study, series) + "/snapshot"
    pictures = {}
    for preset in ("bone", "soft_tissue"):
        for mode in ("vr", "mip"):
            response = gateway.http.get(base, params={"preset": preset, "mode": mode}, timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"] == "image/png" and response.headers["X-Non-Diagnostic"] == "true"
            image = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.float64)
            assert max(image.shape) == 512 and image.std() > 3, (preset, mode, image.std())
            pictures[preset, mode] = image
    assert np.abs(pictures["bone", "vr"] - pictures["soft_tissue", "vr"]).mean() > 5
    assert np.abs(pictures["bone", "vr"] - pictures["bone", "mip"]).mean() > 1
    # Head up, physical aspect: the picture's height : width is the volume's extent along z : x.
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    extent_z = float(by_z[-1].ImagePositionPatient[2]) - float(by_z[0].ImagePositionPatient[2])
    extent_x = 64 * 2 * float(by_z[0].PixelSpacing[1])
    height, width = pictures["bone", "vr"].shape
    assert height / width == pytest.approx(extent_z * len(by_z) / (len(by_z) - 1) / extent_x, rel=0.05)
    bad = gateway.http.get(base, params={"preset": "lungs"}, timeout=30)
    assert bad.status_code == 400 and "bone, soft_tissue" in bad.json()["message"]
    signed = gateway.http.post(gateway.url + "/api/v1/signed-urls", json={
        "study": study, "series": series, "derived": "snapshot", "preset": "soft_tissue", "mode": "mip"}, timeout=30)
    assert signed.status_code == 201, signed.text
    assert requests.get(signed.json()["url"], timeout=30).content == \
        gateway.http.get(base, params={"preset": "soft_tissue", "mode": "mip"}, timeout=30).content


def _retrieve_series(gateway, study: str, series: str) -> list[pydicom.Dataset]:
    from tests.helpers import multipart_parts

    response = gateway.http.get(f"{gateway.dicomweb}/studies/{study}/series/{series}",
                                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                                timeout=60)
    assert response.status_code == 200, response.text[:300]
    return [pydicom.dcmread(io.BytesIO(body)) for _, body in multipart_parts(response)]


def test_mini_ct_is_a_valid_series_whose_voxels_and_geometry_match_the_source(gateway, ct, tmp_path):
    import subprocess
    import zipfile

    study, series, datasets, _ = ct
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    url = series_url(gateway, study, series) + "/mini-ct"
    body = {"z": [3, 10], "box": {"x": 10, "y": 20, "width": 60, "height": 41}, "downsample": 2}
    response = gateway.http.post(url, json=body, timeout=120)
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["cached"] is False and made["study_uid"] == study and made["series_uid"] != series
    assert len(made["instances"]) == 4
    out = sorted(_retrieve_series(gateway, study, made["series_uid"]),
                 key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert [ds.SOPInstanceUID for ds in out] == made["instances"]
    source = np.stack([ds.pixel_array for ds in by_z[2:10]]).astype(np.float64)  # slices 3-10
    spacing = [float(v) for v in by_z[0].PixelSpacing]
    for k, ds in enumerate(out):
        assert (ds.Rows, ds.Columns) == (20, 30)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([2 * spacing[0], 2 * spacing[1]])
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and ds.InstanceNumber == k + 1
        assert [r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence] == \
            [d.SOPInstanceUID for d in by_z[2 + 2 * k:4 + 2 * k]]
        block = source[2 * k:2 * k + 2, 20:60, 10:70].reshape(2, 20, 2, 30, 2).mean(axis=(0, 2, 4))
        assert np.array_equal(ds.pixel_array, np.rint(block).astype(ds.pixel_array.dtype))
        # Voxel (k, 0, 0) is the centre of its source block.
        centre = np.mean([[float(v) for v in d.ImagePositionPatient] for d in by_z[2 + 2 * k:4 + 2 * k]], axis=0)
        centre += np.array([10.5 * spacing[1], 20.5 * spacing[0], 0.0])
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(list(centre), abs=1e-4)
        step = float(by_z[1].ImagePositionPatient[2]) - float(by_z[0].ImagePositionPatient[2])
        assert float(ds.SpacingBetweenSlices) == pytest.approx(2 * step)
        assert float(ds.SliceThickness) == pytest.approx(2 * float(by_z[0].SliceThickness))
        path = tmp_path / f"mini-{k}.dcm"
        ds.save_as(path)
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert "Error" not in report.stdout + report.stderr, report.stdout + report.stderr
    # QIDO sees it; the signed download needs no Authorization header.
    found = gateway.http.get(f"{gateway.dicomweb}/studies/{study}/series",
                             params={"SeriesInstanceUID": made["series_uid"]}, timeout=30).json()
    assert len(found) == 1
    archive = requests.get(made["download"]["url"], timeout=60)
    assert archive.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(archive.content)).namelist()) == 4
    # The same request (also in mm) answers the same series.
    again = gateway.http.post(url, json=body, timeout=60).json()
    assert again["cached"] is True and again["series_uid"] == made["series_uid"]
    origin = [float(v) for v in by_z[0].ImagePositionPatient]
    in_mm = {"z": [3, 10], "downsample": 2, "box": {"units": "mm", "x": origin[0] + 10 * spacing[1],
                                                    "y": origin[1] + 20 * spacing[0], "width": 60 * spacing[1],
                                                    "height": 41 * spacing[0]}}
    assert gateway.http.post(url, json=in_mm, timeout=60).json()["series_uid"] == made["series_uid"]


def test_mini_ct_bounds_and_access(gateway, ct):
    study, series, datasets, _ = ct
    url = series_url(gateway, study, series) + "/mini-ct"
    count = len(datasets)
    for body, expected in (({"z": [0, 5]}, f"1-{count}"), ({"z": [5, 99]}, f"1-{count}"),
                           ({"box": {"x": 100, "y": 0, "width": 60, "height": 10}}, "at most 128"),
                           ({"z": [1, 1], "downsample": 2}, "leaves nothing"),
                           ({"downsample": 5}, "downsample"), ({"box": {"x": 1}}, "width")):
        response = gateway.http.post(url, json=body, timeout=30)
        assert response.status_code == 400, (body, response.text)
        assert expected in response.text, (body, response.text)
    stranger = gateway.session(gateway.token_for(clinic="elsewhere", roles=("doctor",)))
    assert stranger.post(url, json={}, timeout=30).status_code == 404
    support = gateway.session(gateway.token_for(roles=("support",)))
    assert support.post(url, json={}, timeout=30).status_code == 403


def test_a_killed_workers_previews_job_is_taken_over(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    srv = ServerProcess(tmp_path / "data", env={
        "GATEWAY_PREVIEWS__ENABLED": "true", "GATEWAY_WORKER__EMBEDDED": "false", "GATEWAY_PREVIEWS__SETTLE_SECONDS": "0",
        "GATEWAY_PREVIEWS__POLL_INTERVAL": "0.1", "GATEWAY_PREVIEWS__THREADS": "1",
        "GATEWAY_PREVIEWS__COMPRESSION_RATIO": "1", "GATEWAY_PREVIEWS__BINNING": "1"}).start()
    workers = []

    def start_worker():
        log = open(tmp_path / f"worker-{len(workers)}.log", "wb")
        workers.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--kind", "previews"],
                                        env=srv.env, stdout=log, stderr=subprocess.STDOUT))

    try:
        study, series, datasets = make_ct(slices=160, size=256)
        stow(srv, datasets)
        base = series_url(srv, study, series)
        start_worker()
        deadline, status = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            status = srv.http.get(base + "/preview/status", timeout=10).json()
            progress = status.get("progress") or {}
            if status["state"] == "running" and 0 < progress.get("done", 0) < progress.get("total", 0):
                break
            assert status["state"] != "ready", "the job ended before the worker could be killed: make it longer"
            time.sleep(0.02)
        else:
            raise AssertionError(f"the job never ran: {status}")
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=30)
        assert srv.http.get(base + "/preview", timeout=10).status_code == 404
        start_worker()  # on the same host it sees the dead owner and takes the job over at once
        ready = wait_ready(srv.http, base, timeout=120)
        header, codestreams = parse_stream(srv.http.get(base + "/preview", timeout=60).content)
        assert header["slice_count"] == len(datasets) == len(codestreams) and ready["skipped"] == []
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)
        srv.stop()


def test_a_colour_photo_gets_an_rgb_preview_and_thumbnails(gateway, tmp_path):
    from tests.data import sample_file

    ds = pydicom.dcmread(sample_file("SC_rgb.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    stow(gateway, [ds])
    base = series_url(gateway, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    status = wait_ready(gateway.http, base)
    assert not any(name.startswith("snapshot/") for name in status["objects"])  # one image is no volume
    header, (codestream,) = parse_stream(gateway.http.get(base + "/preview", timeout=30).content)
    assert header["samples_per_pixel"] == 3 and (header["rows"], header["columns"]) == (50, 50)
    decoded = glymur_decode(codestream, tmp_path).astype(np.int32)
    source = bin_pixels(ds.pixel_array, 2).astype(np.int32)
    assert decoded.shape == (50, 50, 3) and np.abs(decoded - source).mean() < 0.05 * 255
    thumb = Image.open(io.BytesIO(gateway.http.get(base + "/thumbnail", params={"size": 256, "format": "png"},
                                                   timeout=30).content))
    assert thumb.mode == "RGB" and thumb.size == (256, 256)
    reference = np.asarray(Image.fromarray(ds.pixel_array).resize((256, 256)), dtype=np.float64)
    assert np.abs(np.asarray(thumb, dtype=np.float64) - reference).mean() < 10  # the colours, not grey


def test_an_enhanced_ct_is_previewed_frame_by_frame_with_its_functional_groups(gateway, tmp_path):
    from tests.data import sample_file

    ds = pydicom.dcmread(sample_file("eCT_Supplemental.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    stow(gateway, [ds])
    base = series_url(gateway, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    wait_ready(gateway.http, base)
    header, codestreams = parse_stream(gateway.http.get(base + "/preview", timeout=30).content)
    assert header["slice_count"] == 2 and [s["frame"] for s in header["slices"]] == [1, 2]
    shared = ds.SharedFunctionalGroupsSequence[0]
    transform = shared.PixelValueTransformationSequence[0]
    assert (header["rescale_slope"], header["rescale_intercept"]) == \
        (float(transform.RescaleSlope), float(transform.RescaleIntercept))
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert header["pixel_spacing"] == pytest.approx([2 * v for v in spacing])
    assert header["orientation"] == pytest.approx(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    positions = [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                 for f in ds.PerFrameFunctionalGroupsSequence]
    assert [s["position"] for s in header["slices"]] == [pytest.approx(p) for p in positions]
    for number, codestream in enumerate(codestreams):
        decoded = glymur_decode(codestream, tmp_path).astype(np.int32) + header["value_offset"]
        source = bin_pixels(ds.pixel_array[number], 2).astype(np.int32)
        assert np.abs(decoded - source).mean() < 0.02 * max(np.ptp(source), 1)
