"""What a suite is: named checks, each citing its requirement, run against a :class:`Context`.

A check is a plain function ``def check(ctx) -> None`` registered with
``@suite.check(name, title, requirement, level=...)``. It passes by returning; it fails by
``ctx.expect(condition, message)`` / ``ctx.fail(message)``; it does not apply with
``ctx.not_applicable(why)``. The exchanges it made are its evidence.

Fixtures (``@suite.fixture(name)``) are set-up steps several checks share (storing the
test studies, say): run once per run, on first use; if one fails, every check that needs it
fails with the fixture's error (a check that cannot even set up has not passed).
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from conformance.report import FAIL, NA, PASS, CheckResult

logger = logging.getLogger(__name__)


class CheckFailed(Exception):
    """The target does not meet the requirement (the message says how)."""


class NotApplicable(Exception):
    """The check cannot apply to this target (the message says why)."""


@dataclass(frozen=True)
class Check:
    suite: str
    name: str
    title: str
    requirement: str
    level: str
    func: Callable[["Context"], None]

    @property
    def id(self) -> str:
        return f"{self.suite}.{self.name}"


_FIXTURES: dict[str, Callable[["Context"], Any]] = {}


@dataclass
class Suite:
    name: str
    title: str
    needs: str  # "dicomweb" or "dimse": which target the suite talks to
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, title: str, requirement: str, *, level: str = "standard"):
        if level not in ("standard", "interop"):
            raise ValueError(level)

        def register(func: Callable[[Context], None]):
            if any(c.name == name for c in self.checks):
                raise ValueError(f"duplicate check {self.name}.{name}")
            self.checks.append(Check(self.name, name, title, requirement, level, func))
            return func

        return register

    @staticmethod
    def fixture(name: str):
        def register(func: Callable[[Context], Any]):
            _FIXTURES[name] = func
            return func

        return register


class Context:
    """What checks see: the targets, the run's data, shared fixtures, evidence."""

    def __init__(self, *, web=None, dimse=None, data=None, move_scp=None, unknown_aet: str = "CONFUNKNOWN",
                 recorder=None, options: dict | None = None):
        from conformance.data import RunData
        from conformance.targets import Recorder

        self.recorder = recorder or Recorder()
        self.web = web
        self.dimse = dimse
        if web is not None:
            web.recorder = self.recorder
        if dimse is not None:
            dimse.recorder = self.recorder
        self.data = data or RunData()
        self.move_scp = move_scp  # (ae_title, host, port) of the suite's storage SCP
        self.unknown_aet = unknown_aet
        self.options = options or {}
        self._fixtures: dict[str, tuple[bool, Any]] = {}
        self.state: dict[str, Any] = {}

    # --- outcomes --------------------------------------------------------------------
    @staticmethod
    def expect(condition: Any, message: str) -> None:
        if not condition:
            raise CheckFailed(message)

    @staticmethod
    def fail(message: str) -> None:
        raise CheckFailed(message)

    @staticmethod
    def not_applicable(why: str) -> None:
        raise NotApplicable(why)

    def note(self, *lines: str) -> None:
        self.recorder.add(*lines)

    # --- fixtures --------------------------------------------------------------------
    def fixture(self, name: str) -> Any:
        if name not in self._fixtures:
            saved = self.recorder.take()  # a fixture's own exchanges are not the check's evidence
            try:
                self._fixtures[name] = (True, _FIXTURES[name](self))
            except (CheckFailed, NotApplicable) as exc:
                self._fixtures[name] = (False, exc)
            except Exception as exc:  # noqa: BLE001 - a broken server may answer anything
                logger.debug("fixture %s failed", name, exc_info=True)
                self._fixtures[name] = (False, CheckFailed(f"{type(exc).__name__}: {exc}"))
            fixture_evidence = self.recorder.take()
            self.state.setdefault("fixture_evidence", {})[name] = fixture_evidence
            self.recorder.add(*saved)
        ok, value = self._fixtures[name]
        if ok:
            return value
        if isinstance(value, NotApplicable):
            raise NotApplicable(f"set-up '{name}': {value}")
        evidence = self.state.get("fixture_evidence", {}).get(name, [])
        self.recorder.add(f"(set-up '{name}' failed; its exchanges:)", *evidence[-30:])
        raise CheckFailed(f"set-up '{name}' failed: {value}")


def run_check(check: Check, ctx: Context) -> CheckResult:
    ctx.recorder.take()
    started = time.perf_counter()
    outcome, detail = PASS, ""
    try:
        check.func(ctx)
    except CheckFailed as exc:
        outcome, detail = FAIL, str(exc)
    except NotApplicable as exc:
        outcome, detail = NA, str(exc)
    except Exception as exc:  # noqa: BLE001 - a check that crashes on a server's answer fails, with the cause
        outcome = FAIL
        detail = f"{type(exc).__name__}: {exc}"
        ctx.recorder.add("traceback:", *traceback.format_exc().splitlines()[-6:])
    evidence = ctx.recorder.take()
    if outcome == PASS:
        evidence = []
    return CheckResult(check.id, check.suite, check.title, check.requirement, check.level, outcome, detail,
                       evidence, time.perf_counter() - started)
