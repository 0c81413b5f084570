"""GET /metrics of a gateway with two gunicorn workers and the DIMSE listener: after a STOW,
a rejected instance, a C-STORE and QIDO requests, the counters and histograms moved by exactly
those amounts, whichever process did the work and whichever answered the scrape."""
from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from tests.e2e.dimse_support import SCP_AE, DimseServer
from tests.services import dicom_instance, stow

pytestmark = pytest.mark.e2e

TOKEN = "scrape-secret-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    srv = DimseServer(tmp_path_factory.mktemp("metrics") / "data", env={"GATEWAY_METRICS__TOKEN": TOKEN}).start()
    yield srv
    srv.stop()


def scrape(server) -> dict[tuple, float]:
    r = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(r.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_exactly_what_was_done(gateway, tmp_path, monkeypatch):
    before = scrape(gateway)
    study = generate_uid()
    assert stow(gateway.url, [dicom_instance(study, size=16, seed=1), dicom_instance(study, size=16, seed=2)],
                headers=gateway.auth_headers).status_code == 200
    bad = requests.post(gateway.dicomweb + "/studies", data=b"not DICOM at all" * 20, timeout=30,
                        headers={**gateway.auth_headers, "Content-Type": "application/dicom"})
    assert bad.status_code == 409
    for _ in range(20):  # a connection each: the two workers both answer some
        assert requests.get(gateway.dicomweb + "/studies", params={"StudyInstanceUID": study}, timeout=30,
                            headers={**gateway.auth_headers, "Connection": "close"}).status_code == 200
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = tmp_path / "one.dcm"
    path.write_bytes(dicom_instance(study, size=16, seed=3))
    ae = AE(ae_title="GWTEST")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2")
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title=SCP_AE)
    assert assoc.is_established and assoc.send_c_store(path).Status == 0x0000
    assoc.release()
    ae.shutdown()

    expected = {
        ("gateway_instances_total", (("door", "dicomweb"), ("outcome", "stored"), ("reason", ""))): 2,
        ("gateway_instances_total", (("door", "dicomweb"), ("outcome", "failed"), ("reason", "0xC000"))): 1,
        ("gateway_instances_total", (("door", "dimse"), ("outcome", "stored"), ("reason", ""))): 1,
        ("gateway_http_requests_total", (("door", "dicomweb"), ("method", "POST"), ("route", "/dicom-web/studies"),
                                         ("status", "200"))): 1,
        ("gateway_http_requests_total", (("door", "dicomweb"), ("method", "POST"), ("route", "/dicom-web/studies"),
                                         ("status", "409"))): 1,
        ("gateway_http_requests_total", (("door", "dicomweb"), ("method", "GET"), ("route", "/dicom-web/studies"),
                                         ("status", "200"))): 20,
        ("gateway_http_request_duration_seconds_count", (("door", "dicomweb"), ("route", "/dicom-web/studies"))): 22,
        ("gateway_http_time_to_first_byte_seconds_count", (("door", "dicomweb"), ("route", "/dicom-web/studies"))): 22,
        ("gateway_dimse_responses_total", (("operation", "C-STORE"), ("status", "0x0000"))): 1,
        ("gateway_dimse_associations_total", (("outcome", "accepted"),)): 1,
        # The STOW request's two blobs are written in one call, the C-STORE's in another.
        ("gateway_store_operation_seconds_count", (("operation", "put_files"), ("store", "blobs"))): 2,
    }
    deadline = time.monotonic() + 10  # an access line is counted once its last byte went out
    while True:
        after = scrape(gateway)
        moved = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in expected}
        if moved == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert moved == expected
    assert value(after, "gateway_http_received_bytes_total", door="dicomweb") > value(
        before, "gateway_http_received_bytes_total", door="dicomweb")
    assert value(after, "gateway_ready", check="index") == 1 and value(after, "gateway_ready", check="dimse") == 1
    assert value(after, "gateway_jobs", kind="all", status="pending") == 0
    assert ("gateway_job_oldest_pending_age_seconds", (("kind", "all"),)) in after
    pids = {p.name.rsplit("_", 1)[-1] for p in (gateway.data_dir / "metrics").glob("counter_*.db")}
    assert len(pids) >= 3, pids  # two gunicorn workers and the DIMSE listener wrote samples


def test_metrics_need_the_token_or_an_allowed_address(gateway):
    assert requests.get(gateway.url + "/metrics", timeout=30).status_code == 401
    wrong = requests.get(gateway.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and "metrics.token" in wrong.json()["message"]
