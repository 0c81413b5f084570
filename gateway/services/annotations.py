"""Projects and annotations of a clinic's studies (the fast API's relational data).

Every call acts for a principal of the clinic (``read`` for lists and reads, ``write`` for
creating and changing, ``delete`` for deleting, :mod:`auth.policy`); what belongs to another
clinic answers 404 exactly like what does not exist, and the refusal is audited with the
owner noted. An annotation points at a study (series, instance) the clinic holds. Deleting
an annotation deletes its mask groups and masks, rows first, then every object under its
blob prefix (objects uploaded but never completed too).
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, TypeVar

from auth import policy
from auth.access import AccessControl
from auth.audit import DENIED, NOT_FOUND, OK, AuditService, resource_name
from auth.base import Principal
from gateway.errors import (
    BackendUnavailable,
    BadRequest,
    Conflict,
    NotAuthorized,
    NotFound,
)
from gateway.services.users import UserService
from storage.base import AnnotationStore, BlobStore, InstanceIndex, ProjectStore
from storage.errors import Conflict as StoreConflict
from storage.errors import StorageError
from storage.records import AnnotationRecord, ProjectRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

MASK_ROOT = "mask"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex


def mask_prefix(clinic_id: str, annotation_id: str, group_id: str | None = None) -> str:
    """The blob prefix of an annotation's (a group's) mask objects, in the clinic's namespace
    (``mask/{clinic}/...`` beside ``dicom/{clinic}/...``)."""
    return f"{MASK_ROOT}/{clinic_id}/{annotation_id}/" + (f"{group_id}/" if group_id else "")


def object_key(annotation_id: str, group_id: str, slice_index: int, label: str) -> str:
    """The mask's object key as the API names it: ``mask/{annotation}/{group}/{slice:04d}_{label}.png``."""
    return f"{MASK_ROOT}/{annotation_id}/{group_id}/{slice_index:04d}_{label}.png"


def blob_key(clinic_id: str, annotation_id: str, group_id: str, slice_index: int, label: str) -> str:
    """The blob store key of that object: its object key inside the clinic's namespace."""
    return mask_prefix(clinic_id, annotation_id, group_id) + f"{slice_index:04d}_{label}.png"


def stored(call: Callable[[], T], what: str) -> T:
    """A store call; an unreachable store is a 503."""
    try:
        return call()
    except StoreConflict as exc:
        raise Conflict(str(exc)) from exc
    except StorageError as exc:
        raise BackendUnavailable(f"{what} failed: {exc}") from exc


class AnnotationService:
    def __init__(self, projects: ProjectStore, annotations: AnnotationStore, index: InstanceIndex, blobs: BlobStore,
                 *, access: AccessControl, audit: AuditService, users: UserService):
        self.projects = projects
        self.annotations = annotations
        self.index = index
        self.blobs = blobs
        self.access = access
        self.audit = audit
        self.users = users

    # --- access ----------------------------------------------------------------------------
    def require(self, principal: Principal, action: str, resource: str) -> None:
        """``action`` on the principal's own clinic (403 otherwise); the user row refreshed."""
        scope = self.access.require(principal, action, resource=resource)
        if scope != policy.CLINIC:
            self.audit.record(action, DENIED, principal=principal, resource=resource,
                              detail="annotations are the clinic's own: no access through shares")
            raise NotAuthorized(f"{action} of annotations needs a role of the clinic", action=action)
        self.users.ensure(principal)

    def owned(self, principal: Principal, action: str, kind: str, item_id: str, record):
        """``record`` when it is the principal's clinic's; else the audited 404 of ``kind item_id``."""
        if record is not None and record.clinic_id == principal.clinic_id:
            return record
        resource = f"{kind}:{item_id}"
        if record is None:
            self.audit.record(action, NOT_FOUND, principal=principal, resource=resource)
        else:
            self.audit.record(action, DENIED, principal=principal, resource=resource,
                              resource_clinic=record.clinic_id, detail=f"held by clinic {record.clinic_id}")
        return self._not_found(kind, item_id)

    @staticmethod
    def _not_found(kind: str, item_id: str):
        raise NotFound(f"{kind} {item_id} not found")

    def record_write(self, principal: Principal, action: str, resource: str, detail: str | None = None) -> None:
        self.audit.record(action, OK, principal=principal, resource=resource, resource_clinic=principal.clinic_id,
                          detail=detail)

    # --- projects --------------------------------------------------------------------------
    def list_projects(self, principal: Principal, *, limit: int, offset: int) -> list[ProjectRecord]:
        self.require(principal, policy.READ, "projects")
        return stored(lambda: self.projects.list_projects(principal.clinic_id, limit=limit, offset=offset),
                      "project list")

    def get_project(self, principal: Principal, project_id: str, action: str = policy.READ) -> ProjectRecord:
        self.require(principal, action, f"project:{project_id}")
        return self.owned(principal, action, "project", project_id,
                          stored(lambda: self.projects.get_project(project_id), "project lookup"))

    def create_project(self, principal: Principal, *, name: str, description: str | None) -> ProjectRecord:
        self.require(principal, policy.WRITE, "projects")
        now = now_ms()
        project = ProjectRecord(new_id(), principal.clinic_id, name, description, principal.user_id, now, now)
        stored(lambda: self.projects.add_project(project), "project store")
        self.record_write(principal, "create", f"project:{project.id}", detail=name)
        return project

    def update_project(self, principal: Principal, project_id: str, changes: dict) -> ProjectRecord:
        self.get_project(principal, project_id, policy.WRITE)
        updated = stored(lambda: self.projects.update_project(project_id, changes, now_ms=now_ms()), "project update")
        if updated is None:
            self._not_found("project", project_id)
        self.record_write(principal, "update", f"project:{project_id}", detail=", ".join(sorted(changes)))
        return updated

    # --- annotations -----------------------------------------------------------------------
    def _check_target(self, principal: Principal, study: str, series: str | None, sop: str | None) -> None:
        """The clinic holds the study (series, instance): else the audited 404 of another clinic's."""
        clinic = principal.clinic_id
        if sop:
            record = stored(lambda: self.index.find_instance(clinic, sop), "index lookup")
            found = record is not None and record.study_uid == study and series in (None, record.series_uid)
        elif series:
            found = bool(stored(lambda: self.index.instances(clinic, study, series), "index lookup"))
        else:
            found = clinic in stored(lambda: self.index.clinics_with_study(study), "index lookup")
        if not found:
            what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
            raise self.access.not_found(principal, "create", what, study, series, sop)

    def _check_project(self, principal: Principal, project_id: str | None) -> None:
        if project_id is not None:
            self.owned(principal, policy.WRITE, "project", project_id,
                       stored(lambda: self.projects.get_project(project_id), "project lookup"))

    def create(self, principal: Principal, *, study: str, series: str | None, sop: str | None, type: str,
               data, measurements, software: str | None, project_id: str | None) -> AnnotationRecord:
        self.require(principal, policy.WRITE, resource_name(study, series, sop))
        if sop and not series:
            raise BadRequest('"instance" needs its "series"')
        self._check_target(principal, study, series, sop)
        self._check_project(principal, project_id)
        now = now_ms()
        annotation = AnnotationRecord(new_id(), principal.clinic_id, principal.user_id, study, type, series, sop,
                                      project_id, data, measurements, software, now, now)
        stored(lambda: self.annotations.add_annotation(annotation), "annotation store")
        self.record_write(principal, "create", f"annotation:{annotation.id}",
                          detail=f"{type} on {resource_name(study, series, sop)}")
        return annotation

    def get(self, principal: Principal, annotation_id: str, action: str = policy.READ) -> AnnotationRecord:
        self.require(principal, action, f"annotation:{annotation_id}")
        return self.owned(principal, action, "annotation", annotation_id,
                          stored(lambda: self.annotations.get_annotation(annotation_id), "annotation lookup"))

    def list(self, principal: Principal, *, study: str | None = None, series: str | None = None,
             project_id: str | None = None, user_id: str | None = None, type: str | None = None, limit: int = 100,
             offset: int = 0) -> list[AnnotationRecord]:
        self.require(principal, policy.READ, "annotations")
        return stored(lambda: self.annotations.list_annotations(
            principal.clinic_id, study_uid=study, series_uid=series, project_id=project_id, user_id=user_id,
            type=type, limit=limit, offset=offset), "annotation list")

    def update(self, principal: Principal, annotation_id: str, changes: dict) -> AnnotationRecord:
        self.get(principal, annotation_id, policy.WRITE)
        self._check_project(principal, changes.get("project_id"))
        updated = stored(lambda: self.annotations.update_annotation(annotation_id, changes, now_ms=now_ms()),
                         "annotation update")
        if updated is None:
            self._not_found("annotation", annotation_id)
        self.record_write(principal, "update", f"annotation:{annotation_id}", detail=", ".join(sorted(changes)))
        return updated

    def delete(self, principal: Principal, annotation_id: str) -> None:
        annotation = self.get(principal, annotation_id, policy.DELETE)
        if not stored(lambda: self.annotations.delete_annotation(annotation_id), "annotation delete"):
            self._not_found("annotation", annotation_id)
        removed = self.delete_objects(mask_prefix(annotation.clinic_id, annotation_id))
        self.record_write(principal, "delete", f"annotation:{annotation_id}", detail=f"{removed} mask object(s)")

    def delete_objects(self, prefix: str) -> int:
        """Delete every blob under ``prefix`` (after its rows: a failure leaves only unreferenced objects)."""
        removed = 0
        try:
            for key in list(self.blobs.keys(prefix)):
                self.blobs.delete(key)
                removed += 1
        except StorageError:
            logger.exception("mask objects under %s left behind", prefix)
        return removed

    def study_deleted(self, principal: Principal, study: str, series: str | None = None,
                      sop: str | None = None) -> list[AnnotationRecord]:
        """The clinic deleted a study (series, instance): its annotations go too, with their masks."""
        try:
            removed = self.annotations.delete_study_annotations(principal.clinic_id, study, series, sop)
        except StorageError:
            logger.exception("annotations of %s left behind after its delete", resource_name(study, series, sop))
            return []
        for annotation in removed:
            self.delete_objects(mask_prefix(annotation.clinic_id, annotation.id))
        if removed:
            self.record_write(principal, "delete", resource_name(study, series, sop),
                              detail=f"{len(removed)} annotation(s) with their masks: "
                                     + ", ".join(a.id for a in removed)[:800])
        return removed
