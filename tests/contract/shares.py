"""The contract every share store (``backend.shares``) keeps."""
from __future__ import annotations

from storage.base import ShareStore
from storage.records import ShareRecord
from tests.contract.backend import StoreContract


def make_share(share_id: str = "s1", clinic: str = "c1", study: str = "1.1", series: str | None = None, *,
               target: tuple[str, str | None] = ("clinic", "c2"), target_clinic: str | None = None,
               permissions: tuple[str, ...] = ("view",), created_at: int = 1_000, expires_at: int = 10_000,
               token_hash: str | None = None) -> ShareRecord:
    return ShareRecord(id=share_id, clinic_id=clinic, study_uid=study, series_uid=series, target_type=target[0],
                       target_id=target[1], permissions=permissions, created_by="dr", created_at=created_at,
                       expires_at=expires_at, target_clinic=target_clinic, token_hash=token_hash)


class ShareStoreContract(StoreContract):
    kind = "shares"
    protocol = ShareStore

    # --- shares ---------------------------------------------------------------------------------
    def test_share_round_trip(self, store):
        share = make_share(series="1.1.1", permissions=("view", "download"), target=("user", "u7"),
                           target_clinic="c2")
        store.add_share(share)
        assert store.get_share("s1") == share
        assert store.get_share("nope") is None
        assert share.active(9_999) and not share.active(10_000)
        assert share.allows("download") and not make_share().allows("download")

    def test_share_by_token(self, store):
        store.add_share(make_share("s1", target=("link", None), token_hash="ab" * 32))
        store.add_share(make_share("s2"))
        assert store.share_by_token("ab" * 32).id == "s1"
        assert store.share_by_token("cd" * 32) is None

    def test_active_shares_by_target(self, store):
        store.add_share(make_share("to-clinic", target=("clinic", "c2")))
        store.add_share(make_share("to-user", target=("user", "u7")))
        store.add_share(make_share("to-user-of-c3", target=("user", "u7"), target_clinic="c3"))
        store.add_share(make_share("expired", target=("clinic", "c2"), expires_at=5_000))
        store.add_share(make_share("revoked", target=("clinic", "c2")))
        store.add_share(make_share("link", target=("link", None), token_hash="ef" * 32))
        assert store.revoke_share("revoked", by="dr", now_ms=2_000)
        ids = lambda **kw: sorted(s.id for s in store.active_shares(now_ms=6_000, **kw))  # noqa: E731
        assert ids(user_id="u7", clinic_id="c2") == ["to-clinic", "to-user"]
        assert ids(user_id="u7", clinic_id="c3") == ["to-user", "to-user-of-c3"]
        assert ids(user_id=None, clinic_id="c2") == ["to-clinic"]
        assert ids(user_id="u8", clinic_id="c9") == []
        assert ids(user_id=None, clinic_id=None) == []
        assert sorted(s.id for s in store.active_shares(user_id=None, clinic_id="c2", now_ms=4_000)) == \
            ["expired", "to-clinic"]

    def test_revoke_share(self, store):
        store.add_share(make_share())
        assert store.revoke_share("s1", by="admin", now_ms=3_000)
        assert not store.revoke_share("s1", by="admin", now_ms=4_000)  # once
        assert not store.revoke_share("nope", by="admin", now_ms=4_000)
        revoked = store.get_share("s1")
        assert (revoked.revoked_at, revoked.revoked_by) == (3_000, "admin")
        assert not revoked.active(3_001)

    def test_list_shares(self, store):
        store.add_share(make_share("a", created_at=1_000))
        store.add_share(make_share("b", created_at=2_000, target=("user", "u1")))
        store.add_share(make_share("c", clinic="c9", created_at=3_000))
        store.add_share(make_share("d", created_at=4_000, expires_at=4_500))
        assert [s.id for s in store.list_shares(clinic_id="c1")] == ["d", "b", "a"]  # newest first
        assert [s.id for s in store.list_shares(clinic_id="c1", active_at=5_000)] == ["b", "a"]
        assert [s.id for s in store.list_shares(target_type="user", target_id="u1")] == ["b"]
        assert [s.id for s in store.list_shares(limit=2, offset=1)] == ["c", "b"]
        store.add_share(make_share("e", study="1.9", created_at=5_000))
        assert [s.id for s in store.list_shares(clinic_id="c1", study_uid="1.9")] == ["e"]
        assert [s.id for s in store.list_shares(clinic_id="c1", study_uid="1.1", active_at=5_000)] == ["b", "a"]
