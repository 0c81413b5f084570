"""The previews job in process: queued by ingest, run by a worker with the registered
generators (a test generator among them, registered exactly as a plugin would be)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from auth.base import EMBEDDED_PRINCIPAL
from gateway.config import load_settings
from gateway.imaging import jpeg2000
from gateway.imaging.preview_format import read_header
from gateway.services import Services
from gateway.services.derived import KIND, derive_job, job_key
from gateway.synthetic import cbct_series, to_bytes
from gateway.worker import JobWorker
from plugins.hookspecs import hookimpl
from plugins.previews.generators import Output


@pytest.fixture
def services(tmp_path):
    settings = load_settings(overrides={"storage.data_dir": str(tmp_path / "data"), "storage.fsync": False,
                                        "previews.settle_seconds": 0, "previews.binning": 2}, environ={})
    built = Services.build(settings)
    yield built
    built.close()


def ingest(services, datasets) -> list:
    outcomes = []
    for ds in datasets:
        outcome = services.ingest.commit(services.ingest.stage(io.BytesIO(to_bytes(ds))),
                                         principal=EMBEDDED_PRINCIPAL)
        assert outcome.ok, outcome.error
        outcomes.append(outcome)
    return outcomes


def run_previews(services) -> int:
    worker = JobWorker.for_services(services, kinds=[KIND, "preview-instance"])
    ran = 0
    while (n := worker.run_once()):
        ran += n
    return ran


class CountingGenerator:
    """A third-party generator: the mean of every slice, as JSON."""

    name = "means"

    def params(self, series, settings):
        return {"what": "means"}

    def start(self, series, params, scratch: Path, version: str):
        generator = self

        class Session:
            means: list[float] = []

            def wants(self, item):
                return True

            def prepare(self, item, pixels, header):
                return float(np.mean(pixels))

            def add(self, item, prepared):
                self.means.append(prepared)

            def skip(self, item, reason):
                pass

            def finish(self):
                path = scratch / "means.json"
                path.write_text(str(self.means))
                generator.seen = list(self.means)
                return [Output("means.json", "application/json", path, {"count": len(self.means)})]

        return Session()


class FakePlugin:
    def __init__(self):
        self.generator = CountingGenerator()

    @hookimpl
    def derived_generators(self, settings):
        return [self.generator]


def test_ingest_queues_one_job_per_series_and_the_worker_makes_every_object(services):
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    datasets = list(cbct_series(6, 128, study_uid=study, series_uid=series, signed=True))
    ingest(services, datasets)
    jobs = services.jobs.list_jobs(kind=KIND)
    assert [(j.key, j.clinic_id) for j in jobs] == [(job_key(study, series), "default")]
    plugin = FakePlugin()
    services.pm.register(plugin)
    assert run_previews(services) == 1
    assert services.jobs.list_jobs(kind=KIND) == []
    objects = {o.name: o for o in services.derived.store.for_series("default", series)}
    assert set(objects) == {"preview", "means.json", "thumbnail/256.jpeg", "thumbnail/256.png",
                            "thumbnail/512.jpeg", "thumbnail/512.png", "snapshot/bone-vr.png", "snapshot/bone-mip.png",
                            "snapshot/soft_tissue-vr.png", "snapshot/soft_tissue-mip.png"}
    assert len({o.version for o in objects.values()}) == 1
    assert objects["means.json"].info == {"count": 6} and len(plugin.generator.seen) == 6

    with services.blobs.open(objects["preview"].blob_key) as fh:
        header, start = read_header(fh.read)
        fh.seek(start)
        data = fh.read()
    assert header["rows"] == header["columns"] == 64 and header["value_offset"] == -jpeg2000.SIGNED_SHIFT
    by_z = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert [s["sop_uid"] for s in header["slices"]] == [ds.SOPInstanceUID for ds in by_z]
    first = header["slices"][0]
    decoded = jpeg2000.decode(data[first["offset"]:first["offset"] + first["length"]]).astype(np.int32)
    source = jpeg2000.bin_pixels(by_z[0].pixel_array, 2).astype(np.int32)
    assert np.abs(decoded + header["value_offset"] - source).mean() < 0.02 * (np.ptp(source) + 1)

    # Nothing changed: the job queued again finds its version made and does nothing.
    services.jobs.enqueue([derive_job("default", study, series)])
    assert run_previews(services) == 1
    assert {o.name: o.blob_key for o in services.derived.store.for_series("default", series)} == \
        {n: o.blob_key for n, o in objects.items()}


def test_deleting_the_series_forgets_its_objects_and_their_blobs(services):
    study, series = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.2.1"
    ingest(services, cbct_series(4, 32, study_uid=study, series_uid=series))
    run_previews(services)
    keys = [o.blob_key for o in services.derived.store.for_series("default", series)]
    assert keys and all(services.blobs.exists(k) for k in keys)
    principal = EMBEDDED_PRINCIPAL.__class__("dr", "default", frozenset({"doctor"}))
    services.deleter.delete(principal, study)
    assert services.derived.store.for_series("default", series) == []
    assert not any(services.blobs.exists(k) for k in keys)
    assert run_previews(services) == 1  # the job the delete queued finds nothing to make
    assert services.derived.store.for_series("default", series) == []


def test_a_slice_openjpeg_refuses_is_skipped_with_the_reason_and_the_rest_is_made(services, monkeypatch):
    from gateway.imaging import openjp2

    study, series = "1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.3.1"
    ingest(services, cbct_series(6, 64, study_uid=study, series_uid=series))
    real, calls = openjp2.encode_j2k, []

    def first_refused(samples, **kw):
        calls.append(1)
        if len(calls) == 1:  # a real refusal: more resolution levels than 32² pixels allow
            kw["resolutions"] = 12
        return real(samples, **kw)

    monkeypatch.setattr(openjp2, "encode_j2k", first_refused)
    assert JobWorker.for_services(services, kinds=[KIND]).run_once() == 1
    preview = next(o for o in services.derived.store.for_series("default", series) if o.name == "preview")
    assert preview.info["slice_count"] == 5
    [skipped] = preview.info["skipped"]
    assert skipped["reason"].startswith("OpenJpegError: OpenJPEG opj_start_compress failed: ")
    assert "resolution" in skipped["reason"]
    assert [j.payload["sop_uid"] for j in services.jobs.list_jobs(kind="preview-instance")] == [skipped["sop_uid"]]
