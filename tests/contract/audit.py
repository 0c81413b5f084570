"""The contract every audit log (``backend.audit``) keeps."""
from __future__ import annotations

from storage.base import AuditLog
from storage.records import AuditQuery, AuditRecord
from tests.contract.backend import StoreContract


class AuditLogContract(StoreContract):
    kind = "audit"
    protocol = AuditLog

    # --- the audit log ----------------------------------------------------------------------------
    @staticmethod
    def audit(at: int, action: str = "read", outcome: str = "ok", **kw) -> AuditRecord:
        return AuditRecord(at=at, action=action, outcome=outcome, **kw)

    def test_audit_append_and_search(self, store):
        store.append([])
        store.append([
            self.audit(1_000, "login", "denied", client="10.0.0.9", detail="token expired"),
            self.audit(2_000, "read", user_id="u1", clinic_id="c1", resource="study:1.1", resource_clinic="c1",
                       request_id="r1", door="dicomweb"),
            self.audit(3_000, "read", "denied", user_id="u2", clinic_id="c2", resource="study:1.1/series:1.1.1",
                       resource_clinic="c1"),
            self.audit(4_000, "store", user_id="u3", clinic_id="c3", resource="study:3.1", resource_clinic="c3"),
        ])
        everything = store.search(AuditQuery())
        assert [r.at for r in everything] == [4_000, 3_000, 2_000, 1_000]  # newest first
        assert all(r.id is not None for r in everything)
        second = everything[2]
        assert (second.user_id, second.request_id, second.door, second.resource_clinic) == ("u1", "r1", "dicomweb",
                                                                                             "c1")
        at = lambda **kw: [r.at for r in store.search(AuditQuery(**kw))]  # noqa: E731
        assert at(clinic_id="c1") == [3_000, 2_000]  # as actor or as the resource's owner
        assert at(clinic_id="c2") == [3_000]
        assert at(user_id="u1") == [2_000]
        assert at(action="login") == [1_000]
        assert at(outcome="denied") == [3_000, 1_000]
        assert at(resource="study:1.1") == [3_000, 2_000]  # a prefix
        assert at(resource="study:1.1/series") == [3_000]
        assert at(since_ms=2_000, until_ms=4_000) == [3_000, 2_000]
        assert at(newest_first=False, limit=2) == [1_000, 2_000]
        assert at(newest_first=False, after_id=everything[2].id) == [3_000, 4_000]
        assert at(limit=1, offset=1) == [3_000]

    def test_audit_append_not_waiting_for_the_disk(self, store):
        store.append([self.audit(5_000, "search", user_id="u4", resource="search:study")], durable=False)
        store.append([self.audit(6_000, "read", user_id="u4", resource=f"study:{n}") for n in range(600)],
                     durable=False)  # more records than one statement takes
        store.append([self.audit(7_000, "store", user_id="u4", resource="study:7")])  # durable again after it
        found = store.search(AuditQuery(user_id="u4", limit=1000, newest_first=False))
        assert [r.at for r in found] == [5_000] + [6_000] * 600 + [7_000]
        assert [r.resource for r in found[1:601]] == [f"study:{n}" for n in range(600)]
