"""The mask store in SQL (SQLite and PostgreSQL alike): mask groups of annotations, the uploads
signed for them (pending until ``complete``) and the recorded masks."""
from __future__ import annotations

import logging

from storage.errors import ObjectNotFound
from storage.records import MaskGroupRecord, MaskRecord, MaskUpload

logger = logging.getLogger(__name__)

GROUP_COLUMNS = ("id", "clinic_id", "annotation_id", "name", "model_name", "model_version", "modality",
                 "slice_count", "mask_type", "description", "created_by", "created_at")
UPLOAD_COLUMNS = ("group_id", "slice_index", "label", "clinic_id", "blob_key", "size", "sha256", "sop_uid",
                  "expires_at", "created_by")
MASK_COLUMNS = ("id", "group_id", "clinic_id", "annotation_id", "slice_index", "label", "blob_key", "size", "sha256",
                "width", "height", "content_type", "sop_uid", "created_by", "created_at")
# What recording a mask again (a corrected upload of the same slice and label) replaces.
_MASK_UPDATES = ("blob_key", "size", "sha256", "width", "height", "content_type", "sop_uid", "created_by",
                 "created_at")


def _columns(columns) -> str:
    return ", ".join(columns)


def _placeholders(columns) -> str:
    return ", ".join("?" * len(columns))


class SqlMaskStore:
    """:class:`storage.base.MaskStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    # --- groups ----------------------------------------------------------------------------
    def add_group(self, group: MaskGroupRecord) -> None:
        with self.db.transaction() as cur:
            # Checked first: a foreign-key violation would read as a concurrent writer on PostgreSQL.
            cur.execute(self.db.sql("SELECT 1 FROM annotations WHERE id = ?"), (group.annotation_id,))
            if cur.fetchone() is None:
                raise ObjectNotFound(f"annotation {group.annotation_id}")
            cur.execute(self.db.sql(f"INSERT INTO mask_groups ({_columns(GROUP_COLUMNS)}) "
                                    f"VALUES ({_placeholders(GROUP_COLUMNS)})"),
                        [getattr(group, c) for c in GROUP_COLUMNS])

    def _groups(self, where: str, params: list) -> list[MaskGroupRecord]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {_columns(GROUP_COLUMNS)} FROM mask_groups WHERE {where} "
                                    "ORDER BY created_at, id"), params)
            return [MaskGroupRecord(**dict(zip(GROUP_COLUMNS, r))) for r in cur.fetchall()]

    def get_group(self, group_id: str) -> MaskGroupRecord | None:
        found = self._groups("id = ?", [group_id])
        return found[0] if found else None

    def list_groups(self, annotation_id: str) -> list[MaskGroupRecord]:
        return self._groups("annotation_id = ?", [annotation_id])

    def delete_group(self, group_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("DELETE FROM mask_groups WHERE id = ?"), (group_id,))
            return cur.rowcount > 0

    # --- signed uploads --------------------------------------------------------------------
    def add_uploads(self, uploads: list[MaskUpload]) -> None:
        updated = [c for c in UPLOAD_COLUMNS if c not in ("group_id", "slice_index", "label")]
        statement = self.db.sql(
            f"INSERT INTO mask_uploads ({_columns(UPLOAD_COLUMNS)}) VALUES ({_placeholders(UPLOAD_COLUMNS)}) "
            "ON CONFLICT (group_id, slice_index, label) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in updated))
        with self.db.transaction() as cur:
            for upload in uploads:
                cur.execute(statement, [getattr(upload, c) for c in UPLOAD_COLUMNS])

    def uploads(self, group_id: str) -> list[MaskUpload]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {_columns(UPLOAD_COLUMNS)} FROM mask_uploads WHERE group_id = ? "
                                    "ORDER BY slice_index, label"), (group_id,))
            return [MaskUpload(**dict(zip(UPLOAD_COLUMNS, r))) for r in cur.fetchall()]

    # --- masks -----------------------------------------------------------------------------
    def record_masks(self, masks: list[MaskRecord]) -> list[MaskRecord]:
        insert = self.db.sql(
            f"INSERT INTO masks ({_columns(MASK_COLUMNS)}) VALUES ({_placeholders(MASK_COLUMNS)}) "
            "ON CONFLICT (group_id, slice_index, label) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _MASK_UPDATES))
        done = self.db.sql("DELETE FROM mask_uploads WHERE group_id = ? AND slice_index = ? AND label = ?")
        select = self.db.sql(f"SELECT {_columns(MASK_COLUMNS)} FROM masks "
                             "WHERE group_id = ? AND slice_index = ? AND label = ?")
        stored = []
        with self.db.transaction() as cur:
            for mask in masks:
                where = (mask.group_id, mask.slice_index, mask.label)
                cur.execute(insert, [getattr(mask, c) for c in MASK_COLUMNS])
                cur.execute(done, where)
                cur.execute(select, where)
                stored.append(MaskRecord(**dict(zip(MASK_COLUMNS, cur.fetchone()))))
        return stored

    def _masks(self, where: str, params: list, suffix: str = "") -> list[MaskRecord]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {_columns(MASK_COLUMNS)} FROM masks WHERE {where} {suffix}"), params)
            return [MaskRecord(**dict(zip(MASK_COLUMNS, r))) for r in cur.fetchall()]

    def list_masks(self, group_id: str, *, limit: int = 10_000, offset: int = 0) -> list[MaskRecord]:
        return self._masks("group_id = ?", [group_id, limit, offset], "ORDER BY slice_index, label LIMIT ? OFFSET ?")

    def get_mask(self, mask_id: str) -> MaskRecord | None:
        found = self._masks("id = ?", [mask_id])
        return found[0] if found else None
