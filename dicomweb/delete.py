"""Deleting studies, series and instances (the non-standard but universal PACS DELETE)."""
from __future__ import annotations

import logging

from flask import Response
from flask_smorest import Blueprint

from dicomweb.common import PREFIX
from gateway.web import principal, services

logger = logging.getLogger(__name__)

blp = Blueprint("delete", __name__, url_prefix=PREFIX, description="Delete stored objects")


def _delete(study: str, series: str | None = None, sop: str | None = None) -> Response:
    removed = services().deleter.delete(principal(), study, series, sop)
    logger.info("deleted %d instance(s) of study %s", len(removed), study)
    return Response(status=204)


@blp.route("/studies/<study>", methods=["DELETE"])
@blp.doc(summary="Delete a study: its index rows and blobs")
def delete_study(study: str):
    return _delete(study)


@blp.route("/studies/<study>/series/<series>", methods=["DELETE"])
@blp.doc(summary="Delete a series")
def delete_series(study: str, series: str):
    return _delete(study, series)


@blp.route("/studies/<study>/series/<series>/instances/<sop>", methods=["DELETE"])
@blp.doc(summary="Delete an instance")
def delete_instance(study: str, series: str, sop: str):
    return _delete(study, series, sop)
