"""Outcomes of checks and the report: markdown for people, JSON for machines.

Every check has a stable id (``suite.name``), the requirement it tests (a PS3.18,
PS3.4, PS3.7 or PS3.8 section, or the client behaviour that needs it) and a *level*:

- ``standard``: the cited section says *shall* (or the HTTP/URI RFCs PS3.18 builds on do);
- ``interop``: what real clients need beyond the letter of the standard (OHIF, browsers,
  dicomweb-client, PACS practice), or a security expectation.

A failure at either level is a failure (exit status 1); the report keeps them apart so a
reader can tell "breaks the standard" from "breaks OHIF".
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

PASS, FAIL, NA = "pass", "fail", "n/a"
LEVELS = ("standard", "interop")


@dataclass
class CheckResult:
    id: str
    suite: str
    title: str
    requirement: str
    level: str
    outcome: str
    detail: str = ""  # why it failed, or why it does not apply
    evidence: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Report:
    target: dict[str, Any]
    results: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def add(self, result: CheckResult) -> None:
        self.results.append(result)

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, NA: 0}
        for r in self.results:
            out[r.outcome] += 1
        return out

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == FAIL]

    def summary_line(self) -> str:
        c = self.counts()
        by_level = {lvl: sum(1 for r in self.failed if r.level == lvl) for lvl in LEVELS}
        return (f"{len(self.results)} checks: {c[PASS]} passed, {c[FAIL]} failed "
                f"({by_level['standard']} standard, {by_level['interop']} interoperability), {c[NA]} not applicable")

    # --- output --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "started": self.started, "finished": self.finished,
                "counts": self.counts(), "notes": self.notes, "results": [asdict(r) for r in self.results]}

    def write_json(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_json(), fh, indent=1)

    def to_markdown(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        took = f"{(self.finished or time.time()) - self.started:.1f} s"
        lines = ["# DICOM conformance report", ""]
        for key, value in self.target.items():
            if value:
                lines.append(f"- **{key}**: {value}")
        lines += [f"- **run**: {when}, {took}, Python {platform.python_version()}", "",
                  f"**{self.summary_line()}**", ""]
        suites = list(dict.fromkeys(r.suite for r in self.results))
        lines += ["| suite | pass | fail | n/a |", "|---|---:|---:|---:|"]
        for suite in suites:
            rs = [r for r in self.results if r.suite == suite]
            lines.append(f"| {suite} | {sum(r.outcome == PASS for r in rs)} | {sum(r.outcome == FAIL for r in rs)} "
                         f"| {sum(r.outcome == NA for r in rs)} |")
        lines.append("")
        if self.failed:
            lines += ["## Failures", ""]
            for r in self.failed:
                lines += [f"### `{r.id}`: {r.title}", "",
                          f"- requirement: {r.requirement} ({r.level})", f"- failure: {r.detail}", ""]
                if r.evidence:
                    lines += ["```", *_clip_evidence(r.evidence), "```", ""]
        for suite in suites:
            lines += [f"## {suite}", "", "| check | requirement | level | outcome |", "|---|---|---|---|"]
            for r in (r for r in self.results if r.suite == suite):
                outcome = {PASS: "pass", FAIL: "**FAIL**", NA: "n/a"}[r.outcome]
                if r.outcome == NA and r.detail:
                    outcome += f": {_cell(r.detail)}"
                lines.append(f"| `{r.id}` {_cell(r.title)} | {_cell(r.requirement)} | {r.level} | {outcome} |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def to_text(self) -> str:
        """One line per check, for the terminal."""
        out = []
        for r in self.results:
            mark = {PASS: "PASS", FAIL: "FAIL", NA: "N/A "}[r.outcome]
            line = f"{mark} {r.id:<44} {r.requirement}"
            if r.outcome != PASS and r.detail:
                line += f"\n       {r.detail}"
            out.append(line)
        out.append(self.summary_line())
        return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _clip_evidence(lines: list[str], limit: int = 60) -> list[str]:
    if len(lines) <= limit:
        return lines
    return lines[:10] + [f"... ({len(lines) - limit} lines left out) ..."] + lines[-(limit - 11):]
