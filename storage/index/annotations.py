"""The user, project and annotation stores in SQL (SQLite and PostgreSQL alike).

Uniqueness is decided by ``INSERT ... ON CONFLICT`` (both dialects have it), never by catching a
unique-key violation: PostgreSQL's backend treats those as concurrent writers and retries them.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from storage.errors import Conflict
from storage.records import AnnotationRecord, ProjectRecord, UserRecord

logger = logging.getLogger(__name__)

USER_COLUMNS = ("clinic_id", "user_id", "username", "email", "name", "organization", "department", "roles",
                "created_at", "updated_at")
PROJECT_COLUMNS = ("id", "clinic_id", "name", "description", "created_by", "created_at", "updated_at")
ANNOTATION_COLUMNS = ("id", "clinic_id", "user_id", "study_uid", "type", "series_uid", "sop_uid", "project_id",
                      "data", "measurements", "software", "created_at", "updated_at")
_JSON_COLUMNS = ("data", "measurements")
ANNOTATION_CHANGES = ("type", "data", "measurements", "software", "project_id")


def _placeholders(columns) -> str:
    return ", ".join("?" * len(columns))


def _user(row) -> UserRecord:
    values = dict(zip(USER_COLUMNS, row))
    values["roles"] = tuple(r for r in (values["roles"] or "").split(",") if r)
    return UserRecord(**values)


def _project(row) -> ProjectRecord:
    return ProjectRecord(**dict(zip(PROJECT_COLUMNS, row)))


def _annotation(row) -> AnnotationRecord:
    values = dict(zip(ANNOTATION_COLUMNS, row))
    for column in _JSON_COLUMNS:
        values[column] = None if values[column] is None else json.loads(values[column])
    return AnnotationRecord(**values)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SqlUserStore:
    """:class:`storage.base.UserStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def upsert_user(self, user: UserRecord) -> UserRecord:
        values = [getattr(user, c) for c in USER_COLUMNS]
        values[USER_COLUMNS.index("roles")] = ",".join(sorted(user.roles))
        updated = [c for c in USER_COLUMNS if c not in ("clinic_id", "user_id", "created_at")]
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                f"INSERT INTO users ({', '.join(USER_COLUMNS)}) VALUES ({_placeholders(USER_COLUMNS)}) "
                f"ON CONFLICT (clinic_id, user_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in updated)), values)
            cur.execute(self.db.sql(f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE clinic_id = ? AND user_id = ?"),
                        (user.clinic_id, user.user_id))
            return _user(cur.fetchone())

    def get_user(self, clinic_id: str, user_id: str) -> UserRecord | None:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE clinic_id = ? AND user_id = ?"),
                        (clinic_id, user_id))
            row = cur.fetchone()
        return _user(row) if row else None


class SqlProjectStore:
    """:class:`storage.base.ProjectStore` on a :class:`~storage.index.database.SqlDatabase`."""

    def __init__(self, db):
        self.db = db

    def add_project(self, project: ProjectRecord) -> None:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(
                f"INSERT INTO projects ({', '.join(PROJECT_COLUMNS)}) VALUES ({_placeholders(PROJECT_COLUMNS)}) "
                "ON CONFLICT (clinic_id, name) DO NOTHING"), [getattr(project, c) for c in PROJECT_COLUMNS])
            if cur.rowcount == 0:
                raise Conflict(f"the clinic has a project named {project.name!r} already")

    def _projects(self, where: str, params: list, suffix: str = "") -> list[ProjectRecord]:
        with self.db.read() as cur:
            cur.execute(self.db.sql(f"SELECT {', '.join(PROJECT_COLUMNS)} FROM projects WHERE {where} {suffix}"),
                        params)
            return [_project(r) for r in cur.fetchall()]

    def get_project(self, project_id: str) -> ProjectRecord | None:
        found = self._projects("id = ?", [project_id])
        return found[0] if found else None

    def list_projects(self, clinic_id: str, *, limit: int = 100, offset: int = 0) -> list[ProjectRecord]:
        return self._projects("clinic_id = ?", [clinic_id, limit, offset], "ORDER BY name, id LIMIT ? OFFSET ?")

    def update_project(self, project_id: str, changes: dict, *, now_ms: int) -> ProjectRecord | None:
        columns = [c for c in ("name", "description") if c in changes]
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("SELECT clinic_id FROM projects WHERE id = ?"), (project_id,))
            row = cur.fetchone()
            if row is None:
                return None
            if "name" in changes:
                cur.execute(self.db.sql("SELECT 1 FROM projects WHERE clinic_id = ? AND name = ? AND id <> ?"),
                            (row[0], changes["name"], project_id))
                if cur.fetchone():
                    raise Conflict(f"the clinic has a project named {changes['name']!r} already")
            assignments = [f"{c} = ?" for c in columns] + ["updated_at = ?"]
            cur.execute(self.db.sql(f"UPDATE projects SET {', '.join(assignments)} WHERE id = ?"),
                        [*(changes[c] for c in columns), now_ms, project_id])
        return self.get_project(project_id)


class SqlAnnotationStore:
    """:class:`storage.base.AnnotationStore` on a :class:`~storage.index.database.SqlDatabase`;
    mask groups, masks and pending uploads go with their annotation (ON DELETE CASCADE)."""

    def __init__(self, db):
        self.db = db

    def add_annotation(self, annotation: AnnotationRecord) -> None:
        values = [_json(getattr(annotation, c)) if c in _JSON_COLUMNS else getattr(annotation, c)
                  for c in ANNOTATION_COLUMNS]
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"INSERT INTO annotations ({', '.join(ANNOTATION_COLUMNS)}) "
                                    f"VALUES ({_placeholders(ANNOTATION_COLUMNS)})"), values)

    def _annotations(self, cur, where: str, params: list, suffix: str = "") -> list[AnnotationRecord]:
        cur.execute(self.db.sql(f"SELECT {', '.join(ANNOTATION_COLUMNS)} FROM annotations WHERE {where} {suffix}"),
                    params)
        return [_annotation(r) for r in cur.fetchall()]

    def get_annotation(self, annotation_id: str) -> AnnotationRecord | None:
        with self.db.read() as cur:
            found = self._annotations(cur, "id = ?", [annotation_id])
        return found[0] if found else None

    def list_annotations(self, clinic_id: str, *, study_uid: str | None = None, series_uid: str | None = None,
                         project_id: str | None = None, user_id: str | None = None, type: str | None = None,
                         limit: int = 100, offset: int = 0) -> list[AnnotationRecord]:
        where, params = ["clinic_id = ?"], [clinic_id]
        for column, value in (("study_uid", study_uid), ("series_uid", series_uid), ("project_id", project_id),
                              ("user_id", user_id), ("type", type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self.db.read() as cur:
            return self._annotations(cur, " AND ".join(where), [*params, limit, offset],
                                     "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?")

    def update_annotation(self, annotation_id: str, changes: dict, *, now_ms: int) -> AnnotationRecord | None:
        columns = [c for c in ANNOTATION_CHANGES if c in changes]
        values = [_json(changes[c]) if c in _JSON_COLUMNS else changes[c] for c in columns]
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"UPDATE annotations SET {''.join(f'{c} = ?, ' for c in columns)}updated_at = ? "
                                    "WHERE id = ?"), [*values, now_ms, annotation_id])
            if cur.rowcount == 0:
                return None
        return self.get_annotation(annotation_id)

    def delete_annotation(self, annotation_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql("DELETE FROM annotations WHERE id = ?"), (annotation_id,))
            return cur.rowcount > 0

    def delete_study_annotations(self, clinic_id: str, study_uid: str, series_uid: str | None = None,
                                 sop_uid: str | None = None) -> list[AnnotationRecord]:
        where, params = ["clinic_id = ?", "study_uid = ?"], [clinic_id, study_uid]
        for column, value in (("series_uid", series_uid), ("sop_uid", sop_uid)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self.db.transaction() as cur:
            found = self._annotations(cur, " AND ".join(where), params, "ORDER BY created_at, id")
            if found:
                cur.execute(self.db.sql(f"DELETE FROM annotations WHERE {' AND '.join(where)}"), params)
        return found
