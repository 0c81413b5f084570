"""Run the selected suites against the targets and clean up after them."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from conformance.data import RunData
from conformance.report import NA, CheckResult, Report
from conformance.suites import SUITES, Context, run_check
from conformance.targets import DicomWebTarget, DimseTarget

logger = logging.getLogger(__name__)


@dataclass
class Options:
    dicomweb: str | None = None
    token: str | None = None
    dimse: str | None = None  # AET@HOST:PORT
    calling_aet: str = "CONFSUITE"
    move_scp: str | None = None  # AET@HOST:PORT the suite listens on
    unknown_aet: str = "CONFUNKNOWN"
    only: tuple[str, ...] = ()
    cleanup: bool = True
    seed: int | None = None
    timeout: float = 120.0


def run(options: Options, *, progress=None) -> Report:
    from conformance.targets import parse_ae_address

    web = DicomWebTarget(options.dicomweb, token=options.token, timeout=options.timeout) if options.dicomweb else None
    dimse = None
    if options.dimse:
        aet, host, port = parse_ae_address(options.dimse, 104)
        dimse = DimseTarget(aet, host, port, calling_aet=options.calling_aet)
    move_scp = parse_ae_address(options.move_scp) if options.move_scp else None
    data = RunData(options.seed)
    ctx = Context(web=web, dimse=dimse, data=data, move_scp=move_scp, unknown_aet=options.unknown_aet)
    report = Report(target={"DICOMweb": options.dicomweb, "DIMSE": dimse.describe() if dimse else None,
                            "C-MOVE destination (the suite's SCP)": options.move_scp,
                            "bearer token": "yes" if options.token else None,
                            "UID root of this run": data.root})
    selected = [name for name in SUITES if not options.only or name in options.only]
    try:
        for name in selected:
            suite = SUITES[name]
            available = web if suite.needs == "dicomweb" else dimse
            for check in suite.checks:
                if available is None:
                    result = CheckResult(check.id, check.suite, check.title, check.requirement, check.level, NA,
                                         f"no --{suite.needs} target given")
                else:
                    result = run_check(check, ctx)
                report.add(result)
                if progress:
                    progress(result)
    finally:
        scp = ctx.state.get("move_scp_server")
        if scp is not None:
            scp.stop()
        if options.cleanup and web is not None:
            report.notes.extend(cleanup(web, data))
        elif data.created_studies:
            report.notes.append(f"no clean-up (no DICOMweb target, or --keep): the test studies under UID root "
                                f"{data.root} stay on the server")
        if web is not None:
            web.close()
        report.finished = time.time()
    return report


def cleanup(web: DicomWebTarget, data: RunData) -> list[str]:
    """DELETE every study this run created (a DICOMweb extension most servers have)."""
    deleted, unsupported, other = 0, 0, []
    for study in data.created_studies:
        try:
            response = web.request("DELETE", f"studies/{study}", headers={"Accept": "application/dicom+json"})
        except Exception as exc:  # noqa: BLE001 - clean-up must not hide the results
            other.append(f"{study}: {exc}")
            continue
        if response.status_code in (200, 202, 204):
            deleted += 1
        elif response.status_code == 404:
            pass  # never stored (a suite not run, or a check that failed before storing)
        elif response.status_code in (405, 501):
            unsupported += 1
        else:
            other.append(f"{study}: HTTP {response.status_code}")
    web.recorder.take()
    notes = [f"clean-up: {deleted} test stud{'y' if deleted == 1 else 'ies'} deleted with DICOMweb DELETE"]
    if unsupported:
        notes.append(f"clean-up: the server does not support DELETE (HTTP 405/501); {unsupported} test "
                     f"stud{'y' if unsupported == 1 else 'ies'} under UID root {data.root} left in place")
    if other:
        notes.append("clean-up problems: " + "; ".join(other[:5]))
    return notes
