"""Signed URLs for clients that cannot send an Authorization header: ``POST /api/v1/signed-urls``."""
from __future__ import annotations

import time
from urllib.parse import urlencode

from flask_smorest import Blueprint

from auth.access import DOWNLOAD
from auth.audit import OK, resource_name
from gateway.errors import BadRequest
from gateway.times import iso
from gateway.web import principal, public_base, services
from proprietary.common import BODY
from proprietary.previews import derived_path, image_name
from proprietary.schemas import SignedUrlRequest, SignedUrlSchema

blp = Blueprint("signed_urls", __name__, url_prefix="/api/v1/signed-urls",
                description="Signed URLs for clients that cannot send an Authorization header")


@blp.route("", methods=["POST"])
@blp.arguments(SignedUrlRequest, **BODY)
@blp.response(201, SignedUrlSchema)
@blp.doc(summary="Make a signed URL",
         description='{"path": "/dicom-web/studies/1.2/thumbnail", "method": "GET", "params": {...}, "ttl": 600}: '
                     "a gateway URL that acts for this principal until it expires (every access is checked again). "
                     '{"study", "series", "derived": "preview"|"thumbnail", "size", "format", "ttl"}: the URL of the '
                     "latest version of a derived object, its version in the path (it stops when a new version "
                     "exists, and when the share that granted it is revoked), cacheable by a CDN under the URL. "
                     '{"study", "series", "instance", "ttl"}: a direct download URL of the stored instance: S3 '
                     "presigned when the blob store is S3 (checked now, cannot be recalled), else a signed gateway "
                     "URL. ttl ≤ auth.signed_url_max_ttl.")
def create_signed_url(body: dict):
    signer = services().signer
    try:
        ttl = signer.ttl(body.get("ttl"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if "instance" in body:
        return _instance_url(body, ttl)
    if "derived" in body:
        return _derived_url(body, ttl)
    path, method = body.get("path"), body["method"].upper()
    if not isinstance(path, str) or not path.startswith("/dicom-web/") or ".." in path:
        raise BadRequest('"path" must be a path under /dicom-web/')
    query = signer.sign(method, path, principal(), params=body["params"], ttl=ttl)
    services().audit.record("sign", OK, principal=principal(), resource=path, detail=f"{method}, {ttl} s")
    return {"url": f"{public_base()}{path}?{urlencode(query)}", "method": method,
            "expires_at": iso(int(query["gw_exp"]) * 1000), "kind": "gateway"}


def _instance_url(body: dict, ttl: int) -> dict:
    study, series, sop = body.get("study"), body.get("series"), body.get("instance")
    if not all(isinstance(v, str) and v for v in (study, series, sop)):
        raise BadRequest('"study", "series" and "instance" UIDs are required')
    core, who = services(), principal()
    record = core.retrieve.instances(who, study, series, sop, need=DOWNLOAD)[0]
    presign = getattr(core.blobs, "presigned_get_url", None)
    if presign is not None:
        url = presign(record.blob_key, expires_in=ttl, download_name=f"{sop}.dcm", content_type="application/dicom")
        kind = "s3"
    else:
        path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        url = f"{public_base()}{path}?{urlencode(core.signer.sign('GET', path, who, ttl=ttl))}"
        kind = "gateway"
    core.audit.record("sign", OK, principal=who, resource=resource_name(study, series, sop),
                      resource_clinic=record.clinic_id, detail=f"{kind} download URL, {ttl} s")
    return {"url": url, "method": "GET", "expires_at": iso(int((time.time() + ttl) * 1000)), "kind": kind}


def _derived_url(body: dict, ttl: int) -> dict:
    study, series, kind = body.get("study"), body.get("series"), body["derived"]
    if not all(isinstance(v, str) and v for v in (study, series)):
        raise BadRequest('"study" and "series" UIDs are required with "derived"')
    own = {"preview": set(), "thumbnail": {"size", "format"}, "snapshot": {"preset", "mode"}}[kind]
    foreign = sorted({"size", "format", "preset", "mode"} & set(body) - own)
    if foreign:
        raise BadRequest(f'"{foreign[0]}" is not a parameter of a {kind}')
    core, who = services(), principal()
    params = {"thumbnail": {"size": str(body.get("size", 256)), "format": body.get("format", "jpeg")},
              "snapshot": {"preset": body.get("preset", "bone"), "mode": body.get("mode", "vr")}}.get(kind, {})
    name = image_name(kind, params, core.settings) if params else "preview"
    found, obj = core.derived.require(who, study, series, name)
    path = derived_path(study, series, kind, obj.version)
    query = core.signer.sign("GET", path, who, params=params, ttl=ttl)
    core.audit.record("sign", OK, principal=who, resource=resource_name(study, series),
                      resource_clinic=found.clinic_id, detail=f"{name} version {obj.version}, {ttl} s")
    return {"url": f"{public_base()}{path}?{urlencode(query)}", "method": "GET",
            "expires_at": iso(int(query["gw_exp"]) * 1000), "kind": "gateway"}
