"""CORS: what a browser viewer (OHIF on another origin) needs from a DICOMweb server.

PS3.18 does not define CORS; the requirements are the Fetch standard's CORS protocol as
browsers apply it. A preflight never carries credentials (browsers send no Authorization
header on OPTIONS), so the preflight checks send none even when ``--token`` is given.
"""
from __future__ import annotations

from conformance.suites.base import Context, Suite
from conformance.suites.common import DICOM_JSON, expect_status

suite = Suite("cors", "CORS (browser viewers)", needs="dicomweb")

ORIGIN = "https://viewer.example.org"
FETCH = "WHATWG Fetch 3.2 (CORS protocol); browser viewers (OHIF) read error bodies too"


def _allowed(ctx: Context, response, what: str) -> None:
    allow = response.headers.get("Access-Control-Allow-Origin")
    ctx.expect(allow in ("*", ORIGIN), f"{what}: Access-Control-Allow-Origin is {allow!r}, expected {ORIGIN} or *")


def _preflight(ctx: Context, path: str, method: str, headers: str) -> None:
    response = ctx.web.request("OPTIONS", path, auth=False, note="browser preflight: no credentials", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})
    ctx.expect(200 <= response.status_code < 300, f"preflight answered HTTP {response.status_code}, expected 2xx")
    _allowed(ctx, response, "preflight")
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    wanted = {h.strip() for h in headers.split(",")}
    # "*" does not cover Authorization (Fetch: it must be listed by name).
    missing = sorted(h for h in wanted if h not in allowed and not (h != "authorization" and "*" in allowed))
    ctx.expect(not missing, f"preflight does not allow request header(s) {', '.join(missing)}")
    methods = {m.strip().upper() for m in response.headers.get("Access-Control-Allow-Methods", "").split(",")}
    ctx.expect(method in methods or "*" in methods, f"preflight does not allow method {method} "
                                                    f"(Access-Control-Allow-Methods: {sorted(methods)})")


@suite.check("preflight-get", "preflight of a GET allowing accept, authorization, content-type", FETCH,
             level="interop")
def preflight_get(ctx: Context) -> None:
    _preflight(ctx, "studies", "GET", "accept, authorization, content-type")


@suite.check("preflight-post", "preflight of a STOW-RS POST", FETCH, level="interop")
def preflight_post(ctx: Context) -> None:
    _preflight(ctx, "studies", "POST", "accept, authorization, content-type")


@suite.check("headers-on-success", "Access-Control-Allow-Origin on a successful response", FETCH, level="interop")
def on_success(ctx: Context) -> None:
    a = ctx.fixture("studies")["main"]
    response = ctx.web.get("studies", query=f"PatientID={a.patient_id}",
                           headers={"Origin": ORIGIN, "Accept": DICOM_JSON})
    expect_status(ctx, response, 200, "QIDO with Origin")
    _allowed(ctx, response, "QIDO response")


@suite.check("headers-on-error", "Access-Control-Allow-Origin on error responses too (404, 400)", FETCH,
             level="interop")
def on_error(ctx: Context) -> None:
    missing = ctx.data.uid()
    response = ctx.web.get(f"studies/{missing}/metadata", headers={"Origin": ORIGIN, "Accept": DICOM_JSON})
    ctx.expect(400 <= response.status_code < 500, f"unknown study metadata: HTTP {response.status_code}")
    _allowed(ctx, response, f"the {response.status_code} response")
    response = ctx.web.get("studies", query="limit=ten", headers={"Origin": ORIGIN, "Accept": DICOM_JSON})
    if 400 <= response.status_code < 500:
        _allowed(ctx, response, f"the {response.status_code} response")
