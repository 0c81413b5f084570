"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""
from __future__ import annotations

import logging

from flask import Response, request
from flask_smorest import Blueprint

from auth.credentials import AUTH_PARAMS
from dicomweb.common import PREFIX, base_url, require_json_accept
from gateway.errors import BadRequest
from gateway.headers import BASE_PLACEHOLDER
from gateway.services.query import resolve_attribute
from gateway.web import int_arg, principal, services

logger = logging.getLogger(__name__)

blp = Blueprint("qido", __name__, url_prefix=PREFIX, description="QIDO-RS: search")

_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_TRUNCATED = ('299 {host}: "The number of results exceeded the maximum supported by the server. '
              'Additional results can be requested."')


def _parse_args() -> dict:
    filters: dict[str, str] = {}
    include: list[str] = []
    include_all = False
    for name in request.args:
        if name in AUTH_PARAMS:  # credentials (a link token, a signed URL), not matching keys
            continue
        values = request.args.getlist(name)
        lower = name.lower()
        if lower == "includefield":
            for value in values:
                for item in value.split(","):
                    item = item.strip()
                    if item == "all":
                        include_all = True
                    elif item:
                        resolve_attribute(item)  # 400 when unknown
                        include.append(item)
            continue
        if lower in _CONTROL:
            if len(values) > 1:
                raise BadRequest(f"query parameter {name} is given {len(values)} times")
            continue
        keyword, _tag = resolve_attribute(name)
        if len(values) > 1:
            raise BadRequest(f"matching key {name} is given {len(values)} times; "
                             "use a comma- or backslash-separated list for UIDs")
        if keyword in filters:
            raise BadRequest(f"matching key {keyword} is given twice (by keyword and by tag)")
        filters[keyword] = values[0]
    fuzzy_raw = request.args.get("fuzzymatching", "false").strip().lower()
    if fuzzy_raw not in ("true", "false"):
        raise BadRequest(f"fuzzymatching={fuzzy_raw!r}: expected true or false")
    return {
        "filters": filters,
        "include": "all" if include_all else include,
        "limit": int_arg("limit", None),
        "offset": int_arg("offset", 0),
        "fuzzy": fuzzy_raw == "true",
    }


def search(level: str, study: str | None = None, series: str | None = None):
    media_type = require_json_accept()
    args = _parse_args()
    if args["limit"] == 0:
        raise BadRequest("limit=0 asks for no results: give a positive limit or none")
    root = base_url()
    outcome = services().query.search(principal(), level, args["filters"], include=args["include"],
                                      limit=args["limit"], offset=args["offset"], fuzzy=args["fuzzy"],
                                      study_uid=study, series_uid=series, as_json=True, retrieve_root=root)
    body = "[" + ",".join(outcome.results) + "]"
    if outcome.results and "includefield" in request.args:  # headers may hold BulkDataURIs
        body = body.replace(BASE_PLACEHOLDER, root)
    response = Response(body, status=200, mimetype=media_type)
    host = request.host
    if outcome.truncated:
        response.headers.add("Warning", _TRUNCATED.format(host=host))
    if outcome.ignored:
        response.headers.add("Warning", f'299 {host}: "The following attributes are not supported for '
                                        f'matching at this level and were ignored: {", ".join(outcome.ignored)}"')
    return response


_DOC = ("Matching keys by keyword or tag: single value, universal, wildcard (* ?), UID list, "
        "date/time ranges, fuzzy person names (fuzzymatching=true). includefield, limit, offset.")


@blp.route("/studies", methods=["GET"])
@blp.doc(summary="Search for studies", description=_DOC)
def search_studies():
    return search("study")


@blp.route("/series", methods=["GET"])
@blp.doc(summary="Search for series", description=_DOC)
def search_series():
    return search("series")


@blp.route("/studies/<study>/series", methods=["GET"])
@blp.doc(summary="Search for series of a study", description=_DOC)
def search_study_series(study: str):
    return search("series", study)


@blp.route("/instances", methods=["GET"])
@blp.doc(summary="Search for instances", description=_DOC)
def search_instances():
    return search("instance")


@blp.route("/studies/<study>/instances", methods=["GET"])
@blp.doc(summary="Search for instances of a study", description=_DOC)
def search_study_instances(study: str):
    return search("instance", study)


@blp.route("/studies/<study>/series/<series>/instances", methods=["GET"])
@blp.doc(summary="Search for instances of a series", description=_DOC)
def search_series_instances(study: str, series: str):
    return search("instance", study, series)



