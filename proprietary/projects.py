"""Projects, which group a clinic's annotations: ``/api/v1/projects``."""
from __future__ import annotations

from flask_smorest import Blueprint

from gateway.errors import BadRequest
from gateway.times import iso
from gateway.web import principal, services
from proprietary.annotation_schemas import (
    ProjectCreateSchema,
    ProjectListQuery,
    ProjectListSchema,
    ProjectSchema,
    ProjectUpdateSchema,
)
from proprietary.common import BODY, QUERY
from storage.records import ProjectRecord

blp = Blueprint("projects", __name__, url_prefix="/api/v1/projects", description="Projects grouping annotations")


def project_json(project: ProjectRecord) -> dict:
    return {"id": project.id, "clinic": project.clinic_id, "name": project.name, "description": project.description,
            "created_by": project.created_by, "created_at": iso(project.created_at),
            "updated_at": iso(project.updated_at)}


@blp.route("", methods=["POST"])
@blp.arguments(ProjectCreateSchema, **BODY)
@blp.response(201, ProjectSchema)
@blp.doc(summary="Create a project", description="Names are unique in a clinic (409). Needs the write action.")
def create_project(body: dict):
    return project_json(services().annotations.create_project(principal(), name=body["name"].strip(),
                                                              description=body.get("description")))


@blp.route("", methods=["GET"])
@blp.arguments(ProjectListQuery, **QUERY)
@blp.response(200, ProjectListSchema)
@blp.doc(summary="The clinic's projects, by name")
def list_projects(args: dict):
    found = services().annotations.list_projects(principal(), limit=args["limit"], offset=args["offset"])
    return {"projects": [project_json(p) for p in found]}


@blp.route("/<project_id>", methods=["GET"])
@blp.response(200, ProjectSchema)
@blp.doc(summary="One project of the clinic")
def get_project(project_id: str):
    return project_json(services().annotations.get_project(principal(), project_id))


@blp.route("/<project_id>", methods=["PATCH"])
@blp.arguments(ProjectUpdateSchema, **BODY)
@blp.response(200, ProjectSchema)
@blp.doc(summary="Rename a project or change its description")
def update_project(body: dict, project_id: str):
    if not body:
        raise BadRequest('nothing to change: send "name" and/or "description"')
    if "name" in body:
        body["name"] = body["name"].strip()
    return project_json(services().annotations.update_project(principal(), project_id, body))
