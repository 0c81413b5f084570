"""The seeded fuzz run of :mod:`conformance.fuzz` against a gateway of its own (DICOMweb and
DIMSE): malformed Part 10 files by STOW-RS and C-STORE, broken multipart and chunked bodies,
odd QIDO and WADO requests. No 5xx, no hang, every refusal explained, the store unchanged by
what was refused. ``GATEWAY_FUZZ_SEED`` / ``GATEWAY_FUZZ_CASES`` pick another run; a failure
names its seed and case, replayed with ``python -m conformance.fuzz --seed S --case K``."""
from __future__ import annotations

import os
import re

import pytest

from conformance.fuzz import Fuzzer
from conformance.targets import DimseTarget
from tests.e2e.dimse_support import SCP_AE, DimseServer

pytestmark = pytest.mark.e2e

SEED = os.environ.get("GATEWAY_FUZZ_SEED", "20261203")
CASES = int(os.environ.get("GATEWAY_FUZZ_CASES", "1500"))  # about 90 s on two cores


def test_fuzz_run_finds_no_500_no_hang_and_changes_nothing_it_refused(tmp_path):
    server = DimseServer(tmp_path / "data").start()
    try:
        fuzzer = Fuzzer(server.dicomweb, token=server.token, seed=SEED,
                        dimse=DimseTarget(SCP_AE, "127.0.0.1", server.dimse_port, calling_aet="GWTEST"))
        summary = fuzzer.run(cases=CASES)
    finally:
        server.stop()
    print(summary.text())
    assert not summary.findings, summary.text()
    assert summary.cases == CASES
    # the run did reach every kind of input, and the server both refused and stored
    assert set(summary.kinds) >= {"stow-file", "stow-single", "multipart", "chunked", "qido", "qido-raw", "wado",
                                  "c-store"}, summary.kinds
    assert summary.statuses[400] and summary.statuses[409] and summary.statuses[202], summary.statuses
    assert summary.statuses["c-store 0xC000"] and summary.statuses["c-store 0x0000"], summary.statuses
    log = server.log_path.read_text(errors="replace")
    assert not re.search(r"unhandled error|Traceback", log), log[-3000:]
