"""The conformance suite against our gateway (every check must pass) and against Orthanc.

Orthanc is the suite's own validation: a third-party server whose deviations are known. The
set of checks Orthanc fails must be exactly :data:`ORTHANC_EXPECTED_FAILURES`; a suite bug
that fails a conforming behaviour, or passes a deviating one, changes that set.

Orthanc 1.10 listens on 0.0.0.0, so it runs (with the suite as its client) inside a private
network namespace that has only loopback (``unshare -n``; ``bench.orthanc`` brings ``lo`` up).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.dimse_support import SCP_AE, DimseServer
from tests.helpers import free_port

pytestmark = [pytest.mark.e2e]

CALLING_AE, MOVE_AE = "CONFSUITE", "CONFSCP"

# Checks our gateway fails, each with the reason: known gateway bugs, reported, to be fixed in the
# DICOMweb door (then this test says to remove them).
GATEWAY_EXPECTED_FAILURES: dict[str, str] = {}

# What Orthanc 1.10.1 + DICOMweb plugin 1.7 (Debian 12) gets wrong, one line each.
ORTHANC_EXPECTED_FAILURES: dict[str, str] = {
    "stow.duplicate-conflict": "other content under a stored SOP Instance UID: 200, listed as stored, old content kept",
    "stow.partial-202": "one instance stored, one refused: 409 (meaning none stored) instead of 202",
    "stow.bad-syntax-400": "a body without the declared boundary: 200 with empty sequences instead of 400",
    "qido.all-series-study-attributes": "/series results carry no study attributes (PatientName, StudyDate...)",
    "qido.match-uid-list-backslash": "a backslash-separated UID list (%5C) matches nothing",
    "qido.fuzzy-name-component": "fuzzymatching=true is ignored",
    "qido.percent-encoded-wildcard": "percent-encoded wildcard (%2A, as dicomweb-client sends it) matches nothing",
    "qido.includefield-all": "includefield=all is ignored",
    "qido.truncation-warning": "no Warning header on a page cut by limit",
    "qido.bad-parameter-400": "an invalid StudyDate value answers 200 instead of 400",
    "wado.default-transfer-syntax": "cannot decode JPEG 2000 to Explicit VR Little Endian: 500",
    "wado.unavailable-transfer-syntax-406": "an unknown transfer syntax answers 400 instead of 406",
    "wado.accept-variants": "Accept: multipart/* answers 400",
    "wado.metadata-not-acceptable-406": "metadata with Accept: image/png answers 400 instead of 406",
    "wado.frames-default-uncompressed": "cannot decode a JPEG 2000 frame to octet-stream: 500",
    "wado.frames-any-type": "frames with Accept type=\"*/*\" (dicomweb-client's default) answer 400",
    "wado.thumbnails": "no thumbnail resources (404)",
    "cors.preflight-get": "no CORS: OPTIONS answers 404",
    "cors.preflight-post": "no CORS: OPTIONS answers 404",
    "cors.headers-on-success": "no CORS: no Access-Control-Allow-Origin",
    "cors.headers-on-error": "no CORS: no Access-Control-Allow-Origin",
    "ohif.study-list": "includefield=00081030%2C... (OHIF's encoding of the list) is ignored: no StudyDescription",
    "dimse.move-unknown-destination": "C-MOVE to an unknown AE answers 0xC000 instead of 0xA801",
}


def _results(path: Path) -> dict:
    assert path.exists(), "the suite wrote no JSON report"
    return json.loads(path.read_text())


def _failures(report: dict) -> dict[str, str]:
    return {r["id"]: r["detail"] for r in report["results"] if r["outcome"] == "fail"}


def _explain(report: dict, ids) -> str:
    lines = []
    for r in report["results"]:
        if r["id"] in ids:
            lines.append(f"{r['id']} ({r['outcome']}): {r['detail']}")
            lines += [f"    {e}" for e in r["evidence"][-12:]]
    return "\n".join(lines)


def test_every_check_names_its_requirement():
    from conformance.suites import SUITES

    ids = [c.id for suite in SUITES.values() for c in suite.checks]
    assert len(ids) == len(set(ids))
    for suite in SUITES.values():
        for check in suite.checks:
            assert check.requirement.strip() and check.title.strip(), check.id
            assert any(ref in check.requirement for ref in ("PS3.", "RFC", "Fetch")), check.id
    assert set(GATEWAY_EXPECTED_FAILURES) <= set(ids)
    assert set(ORTHANC_EXPECTED_FAILURES) <= set(ids)


@pytest.fixture(scope="module")
def conformance_gateway(tmp_path_factory):
    """A gateway with DIMSE that knows the suite's AE (peer) and its storage SCP (C-MOVE destination)."""
    move_port = free_port()
    srv = DimseServer(tmp_path_factory.mktemp("conformance") / "data",
                      peers=[{"ae_title": CALLING_AE, "hosts": ["127.0.0.1"]}],
                      destinations=[{"ae_title": MOVE_AE, "host": "127.0.0.1", "port": move_port}],
                      env={"GATEWAY_LOG__LEVEL": "warning"}).start()
    srv.move_port = move_port
    yield srv
    srv.stop()


def test_gateway_passes_every_check(conformance_gateway, tmp_path):
    srv = conformance_gateway
    out = tmp_path / "gateway.json"
    command = [sys.executable, "-m", "conformance", "--dicomweb", srv.dicomweb,
               "--dimse", f"{SCP_AE}@127.0.0.1:{srv.dimse_port}", "--calling-aet", CALLING_AE,
               "--move-scp", f"{MOVE_AE}@127.0.0.1:{srv.move_port}", "--json", str(out),
               "--report", str(tmp_path / "gateway.md"), "-q"]
    token = getattr(srv, "token", None)
    if token:
        command += ["--token", token]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = _results(out)
    failures = _failures(report)
    unexpected = set(failures) - set(GATEWAY_EXPECTED_FAILURES)
    assert not unexpected, (f"the gateway fails {len(unexpected)} check(s):\n{_explain(report, unexpected)}\n"
                            f"{run.stdout[-2000:]}\n{srv.log()}")
    fixed = set(GATEWAY_EXPECTED_FAILURES) - set(failures)
    assert not fixed, f"now passing, remove from GATEWAY_EXPECTED_FAILURES: {sorted(fixed)}"
    not_applicable = [r["id"] for r in report["results"] if r["outcome"] == "n/a"]
    assert not not_applicable, f"checks that did not apply to the gateway: {not_applicable}"
    assert (run.returncode == 0) == (not failures), run.stdout[-2000:]
    deleted = [int(note.split()[1]) for note in report["notes"] if note.startswith("clean-up:") and "deleted" in note]
    assert deleted and deleted[0] > 0, report["notes"]  # the suite cleaned up after itself


def _orthanc_available() -> str | None:
    from bench.orthanc import DICOMWEB_PLUGIN, INSTALL_HINT, ORTHANC_BINARY

    if not ORTHANC_BINARY.exists() or not DICOMWEB_PLUGIN.exists():
        return f"Orthanc with its DICOMweb plugin is not installed ({INSTALL_HINT})"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a private network namespace (unshare -n needs root): {probe.stderr.strip()}"
    return None


def test_orthanc_fails_exactly_the_known_checks(tmp_path):
    why = _orthanc_available()
    if why:
        from tests.services import missing_service

        missing_service(why)
    out = tmp_path / "orthanc.json"
    # bench.orthanc brings loopback up in the new namespace, starts Orthanc, then runs the suite
    # (after "--") in the same namespace; every port is free there, fixed ones are fine.
    orthanc = [sys.executable, "-m", "bench.orthanc", "--http-port", "8043", "--dicom-port", "4243", "--aet",
               "ORTHANC", "--workdir", str(tmp_path / "orthanc"), "--modality", f"{CALLING_AE}@127.0.0.1:4999",
               "--modality", f"{MOVE_AE}@127.0.0.1:11113", "--restrict-aets"]
    suite = [sys.executable, "-m", "conformance", "--dicomweb", "{url}", "--dimse", "{aet}@127.0.0.1:{dicom_port}",
             "--calling-aet", CALLING_AE, "--move-scp", f"{MOVE_AE}@127.0.0.1:11113", "-q", "--json", str(out),
             "--report", str(tmp_path / "orthanc.md")]
    run = subprocess.run(["unshare", "-n", *orthanc, "--", *suite], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.exists(), f"the suite did not run against Orthanc:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    report = _results(out)
    failures = _failures(report)
    expected = set(ORTHANC_EXPECTED_FAILURES)
    assert set(failures) == expected, (
        f"unexpectedly failing on Orthanc:\n{_explain(report, set(failures) - expected)}\n"
        f"unexpectedly passing on Orthanc: {sorted(expected - set(failures))}")
    not_applicable = [r["id"] for r in report["results"] if r["outcome"] == "n/a"]
    assert not not_applicable, f"checks that did not apply to Orthanc: {not_applicable}"
    assert run.returncode == 1  # the suite's exit status reports Orthanc's failures
