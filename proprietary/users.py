"""The caller's own user record: ``GET /api/v1/me`` (created or updated from the token's claims)."""
from __future__ import annotations

from flask_smorest import Blueprint

from gateway.times import iso
from gateway.web import principal, services
from proprietary.annotation_schemas import UserSchema
from storage.records import UserRecord

blp = Blueprint("users", __name__, url_prefix="/api/v1/me", description="The caller's user record")


def user_json(user: UserRecord) -> dict:
    return {"id": user.user_id, "clinic": user.clinic_id, "username": user.username, "email": user.email,
            "name": user.name, "organization": user.organization, "department": user.department,
            "roles": list(user.roles), "created_at": iso(user.created_at), "updated_at": iso(user.updated_at)}


@blp.route("", methods=["GET"])
@blp.response(200, UserSchema)
@blp.doc(summary="Who am I",
         description="The user record of the token's subject in its clinic, created on first use and updated when "
                     "the claims change (preferred_username, email, name, organization, department, roles). "
                     "403 for share links.")
def me():
    return user_json(services().users.me(principal()))
