"""A DICOM conformance suite for any DICOMweb server and DIMSE peer.

``python -m conformance --dicomweb URL --dimse AET@HOST:PORT`` runs every check; each names
the requirement it tests (a PS3.18 / PS3.4 / PS3.7 / PS3.8 section, or the client behaviour
that needs it) and reports pass, fail (with the exchanges as evidence) or not applicable.
See ``conformance/STATEMENT.md`` for the gateway's own conformance statement.
"""
from __future__ import annotations

from conformance.report import FAIL, NA, PASS, CheckResult, Report
from conformance.runner import Options, run

__all__ = ["FAIL", "NA", "PASS", "CheckResult", "Options", "Report", "run"]
