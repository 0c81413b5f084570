"""Which audit records wait for the disk: changes and refusals always; successful reads and
searches only with ``audit.durable_reads``."""
from __future__ import annotations

import pytest

from auth.audit import DENIED, OK, AuditService
from auth.base import Principal


class _Log:
    def __init__(self):
        self.appended: list[tuple[str, str, bool]] = []

    def append(self, records, *, durable: bool = True) -> None:
        self.appended += [(r.action, r.outcome, durable) for r in records]


@pytest.mark.parametrize("durable_reads", [False, True])
def test_only_successful_reads_and_searches_may_skip_the_wait(durable_reads):
    log = _Log()
    audit = AuditService(log, read_window=0, durable_reads=durable_reads)
    doctor = Principal("dr", "c1", frozenset({"doctor"}))
    for action, outcome in [("read", OK), ("search", OK), ("store", OK), ("delete", OK), ("read", DENIED)]:
        audit.record(action, outcome, principal=doctor, resource="study:1")
    assert log.appended == [("read", OK, durable_reads), ("search", OK, durable_reads), ("store", OK, True),
                            ("delete", OK, True), ("read", DENIED, True)]


def test_the_setting_reaches_the_service():
    from gateway.config import load_settings

    settings = load_settings(overrides={"audit.durable_reads": True}, environ={})
    assert AuditService.from_settings(_Log(), settings).durable_reads is True
    assert AuditService.from_settings(_Log(), load_settings(environ={})).durable_reads is False
