"""The suites, one module per area, in the order they run."""
from __future__ import annotations

from conformance.suites import cors, dimse, ohif, qido, stow, wado
from conformance.suites.base import Check, CheckFailed, Context, NotApplicable, Suite, run_check

SUITES: dict[str, Suite] = {module.suite.name: module.suite for module in (stow, qido, wado, cors, ohif, dimse)}

__all__ = ["SUITES", "Check", "CheckFailed", "Context", "NotApplicable", "Suite", "run_check"]
