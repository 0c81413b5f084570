"""STOW-RS (PS3.18 10.5): status codes, response module, the multipart forms real clients send."""
from __future__ import annotations

import logging
import time

from conformance.suites.base import Context, Suite
from conformance.suites.common import (ACCEPT_DICOM, DICOM_JSON, FAILED_SEQ, FAILURE_REASON, REF_SOP_CLASS,
                                       REF_SOP_INSTANCE, REFERENCED_SEQ, RETRIEVE_URL, WARNING_REASON,
                                       error_json, expect_dicom_json, expect_status, first, multipart_body, new_boundary, qido,
                                       qido_results, stored_ok, stow, text, values)

logger = logging.getLogger(__name__)

suite = Suite("stow", "STOW-RS (PS3.18 10.5)", needs="dicomweb")


def valid_failure_reason(code) -> bool:
    """PS3.18 I.2.2 refers to the storage statuses of PS3.4 B.2.3 and the general ones of PS3.7 C."""
    if not isinstance(code, int):
        return False
    return (0xA700 <= code <= 0xA7FF or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF
            or 0x0100 <= code <= 0x02FF)


def _failed_items(body: dict) -> list[dict]:
    return values(body, FAILED_SEQ) if isinstance(body, dict) else []


def _failure_for(ctx: Context, body: dict, sop: str, what: str) -> int:
    items = _failed_items(body)
    ctx.expect(items, f"{what}: no FailedSOPSequence (0008,1198) in the response (PS3.18 Annex I: required "
                      "when an instance failed)")
    match = [i for i in items if text(i, REF_SOP_INSTANCE) == sop]
    ctx.expect(match, f"{what}: FailedSOPSequence does not name the failed SOP Instance {sop}")
    reason = first(match[0], FAILURE_REASON)
    ctx.expect(valid_failure_reason(reason), f"{what}: FailureReason (0008,1197) is {reason!r}, not a PS3.18 I.2.2 "
                                             "/ PS3.4 B.2.3 status code")
    return reason


def _instances_of_study(ctx: Context, study: str) -> list[dict]:
    return qido_results(ctx, qido(ctx, f"studies/{study}/instances"), f"QIDO instances of study {study}")


@suite.check("multipart-200", "multipart/related STOW of new instances answers 200 with the response module",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (200); Annex I Table I.1-1")
def multipart_200(ctx: Context) -> None:
    study = ctx.data.small_study("S1", 2)
    ctx.state["stow_s1"] = study
    response = stow(ctx, study.instances)
    body = stored_ok(ctx, response, study.instances, "STOW of 2 new instances")
    ctx.expect(not _failed_items(body), "a 200 response carries a FailedSOPSequence")
    for item in values(body, REFERENCED_SEQ):
        sop = text(item, REF_SOP_INSTANCE)
        expected = next((i for i in study.instances if i.sop == sop), None)
        if expected is None:
            continue
        ctx.expect(text(item, REF_SOP_CLASS) == expected.sop_class,
                   f"ReferencedSOPClassUID of {sop} is {text(item, REF_SOP_CLASS)!r}, expected {expected.sop_class}")
        ctx.expect(RETRIEVE_URL in item, f"the ReferencedSOPSequence item of {sop} has no RetrieveURL (0008,1190)")


@suite.check("retrieve-urls", "RetrieveURLs of the STOW response resolve to the study and the instances",
             "PS3.18 Annex I Table I.1-1 (Retrieve URL); 10.4")
def retrieve_urls(ctx: Context) -> None:
    study = ctx.data.small_study("S2", 1)
    body = stored_ok(ctx, stow(ctx, study.instances), study.instances, "STOW")
    ctx.expect(RETRIEVE_URL in body, "the response has no study RetrieveURL (0008,1190) (Type 2: must be present)")
    urls = [text(body, RETRIEVE_URL)] + [text(i, RETRIEVE_URL) for i in values(body, REFERENCED_SEQ)]
    for url in [u for u in urls if u]:
        response = ctx.web.get(url, headers={"Accept": ACCEPT_DICOM})
        expect_status(ctx, response, 200, f"GET RetrieveURL {url}")


@suite.check("unquoted-parameters", "Content-Type with unquoted type= and boundary= (dcmjs, OHIF) is accepted",
             "PS3.18 10.5.1; RFC 2045 5.1 (parameter value: token or quoted-string)")
def unquoted(ctx: Context) -> None:
    study = ctx.data.small_study("S3", 1)
    boundary = new_boundary()
    response = stow(ctx, study.instances, boundary=boundary,
                    content_type=f"multipart/related; type=application/dicom; boundary={boundary}")
    stored_ok(ctx, response, study.instances, "STOW with unquoted parameters")


@suite.check("chunked-body", "a chunked request body (dicomweb-client streams bodies > 1 MB) is stored for real",
             "PS3.18 10.5.1; RFC 9112 7.1 (chunked transfer coding)")
def chunked(ctx: Context) -> None:
    study = ctx.data.small_study("S4", 2)
    response = stow(ctx, study.instances, chunked=True, note="Transfer-Encoding: chunked")
    stored_ok(ctx, response, study.instances, "chunked STOW")
    found = _instances_of_study(ctx, study.uid)
    ctx.expect(len(found) == len(study.instances),
               f"after a chunked STOW answered {response.status_code}, QIDO finds {len(found)} of "
               f"{len(study.instances)} instances")


@suite.check("duplicate-identical", "re-sending an identical instance (a client retry) is not an error",
             "PS3.18 10.5.3.1 (200/202); client retries (dicomweb-client, PACS re-sends)", level="interop")
def duplicate_identical(ctx: Context) -> None:
    study = ctx.data.small_study("S5", 1)
    stored_ok(ctx, stow(ctx, study.instances), study.instances, "first STOW")
    again = stow(ctx, study.instances, note="the same bytes again")
    ctx.expect(again.status_code in (200, 202), f"re-sending identical bytes: HTTP {again.status_code}, expected 200 "
                                                "(or 202 with a WarningReason)")
    body = expect_dicom_json(ctx, again, "re-send")
    referenced = [i for i in values(body, REFERENCED_SEQ) if text(i, REF_SOP_INSTANCE) == study.instances[0].sop]
    ctx.expect(referenced, "the re-sent instance is not in ReferencedSOPSequence: a retrying client is told it failed")
    found = _instances_of_study(ctx, study.uid)
    ctx.expect(len(found) == 1, f"QIDO finds {len(found)} instances after storing the same instance twice")


@suite.check("duplicate-conflict", "same SOP Instance UID with other content: the answer says what was kept",
             "PS3.18 10.5.3.1; Annex I (Failed SOP Sequence / Warning Reason); duplicate policies of PACS",
             level="interop")
def duplicate_conflict(ctx: Context) -> None:
    study = ctx.data.small_study("S6", 1)
    original = study.instances[0]
    stored_ok(ctx, stow(ctx, [original]), [original], "first STOW")
    changed = ctx.data.variant(original, SeriesDescription="CHANGED BY CONFORMANCE")
    response = stow(ctx, [changed], note="same SOP Instance UID, other SeriesDescription")
    ctx.expect(response.status_code in (200, 202, 409),
               f"HTTP {response.status_code}: expected 200 (replaced), or 409/202 with a FailedSOPSequence")
    body = error_json(ctx, response, "conflicting STOW")
    failed = [i for i in _failed_items(body) if text(i, REF_SOP_INSTANCE) == original.sop]
    referenced = [i for i in values(body, REFERENCED_SEQ) if text(i, REF_SOP_INSTANCE) == original.sop]
    metadata = ctx.web.get(f"{original.path}/metadata", headers={"Accept": DICOM_JSON})
    expect_status(ctx, metadata, 200, "instance metadata after the conflicting STOW")
    served = text((expect_dicom_json(ctx, metadata, "metadata") or [{}])[0], "0008103E")
    replaced = served == "CHANGED BY CONFORMANCE"
    if failed:
        _failure_for(ctx, body, original.sop, "conflicting STOW")
        ctx.expect(not replaced, "the instance is reported failed, yet the new content is served")
    elif referenced:
        warned = WARNING_REASON in referenced[0]
        ctx.expect(replaced or warned,
                   "the server reports the new content stored (ReferencedSOPSequence, no WarningReason) but "
                   f"serves the old one (SeriesDescription {served!r}): the change was silently discarded")
    else:
        ctx.fail("the instance is in neither ReferencedSOPSequence nor FailedSOPSequence")


@suite.check("study-mismatch-409", "an instance of another study POSTed to /studies/{study} fails with 409",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (409: Study Instance UID mismatch); Annex I")
def study_mismatch(ctx: Context) -> None:
    target = ctx.data.small_study("S7", 1)
    stored_ok(ctx, stow(ctx, target.instances), target.instances, "STOW of the target study")
    stranger = ctx.data.small_study("S8", 1)
    response = stow(ctx, stranger.instances, study=target.uid, note="instance of another study")
    expect_status(ctx, response, 409, "STOW to another study's URL")
    body = error_json(ctx, response, "409 response")
    _failure_for(ctx, body, stranger.instances[0].sop, "study mismatch")
    found = qido_results(ctx, qido(ctx, "studies", [("StudyInstanceUID", stranger.uid)]), "QIDO of the other study")
    ctx.expect(not found, "the mismatching instance was stored anyway")


@suite.check("partial-202", "some stored, some failed: 202 with both sequences (409 only if none was stored)",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (202; 409: unable to store any); Annex I Table I.1-1")
def partial(ctx: Context) -> None:
    target = ctx.data.small_study("S9", 1)
    stranger = ctx.data.small_study("S10", 1)
    good = target.instances[0]
    response = stow(ctx, target.instances + stranger.instances, study=target.uid,
                    note="one instance of the study, one of another")
    ctx.expect(response.status_code in (202, 409), f"STOW with one good and one mismatching instance: HTTP "
                                                   f"{response.status_code}, expected 202 (or 409 storing none)")
    body = error_json(ctx, response, f"{response.status_code} response")
    _failure_for(ctx, body, stranger.instances[0].sop, "partial STOW")
    referenced = {text(i, REF_SOP_INSTANCE) for i in values(body, REFERENCED_SEQ)}
    stored = [r for r in _instances_of_study(ctx, target.uid) if text(r, "00080018") == good.sop]
    if response.status_code == 202:
        ctx.expect(good.sop in referenced, "the stored instance is not in ReferencedSOPSequence")
        ctx.expect(stored, "202 names the good instance stored, but QIDO does not find it")
    else:
        ctx.expect(good.sop not in referenced and not stored,
                   f"409 means no instance was stored, but {good.sop} was "
                   f"({'in ReferencedSOPSequence' if good.sop in referenced else 'found by QIDO'}): expected 202")


@suite.check("unsupported-media-type-415", "a body that is not multipart/related DICOM answers 415",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (415)")
def unsupported_media_type(ctx: Context) -> None:
    response = ctx.web.post("studies", headers={"Content-Type": "application/pdf", "Accept": DICOM_JSON},
                            data=b"%PDF-1.4 not DICOM")
    expect_status(ctx, response, 415, "STOW of application/pdf")


@suite.check("bad-syntax-400", "a multipart body without its boundary stores nothing and answers 400",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (400: bad syntax)")
def bad_syntax(ctx: Context) -> None:
    study = ctx.data.small_study("S11", 1)
    body = multipart_body([study.instances[0].data], "the-real-boundary")
    response = ctx.web.post("studies", data=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary="another-boundary"',
        "Accept": DICOM_JSON}, note="boundary parameter does not match the body")
    expect_status(ctx, response, 400, "STOW whose body never has the declared boundary")
    found = qido_results(ctx, qido(ctx, "studies", [("StudyInstanceUID", study.uid)]), "QIDO after the bad STOW")
    ctx.expect(not found, "the instance of the malformed body was stored anyway")


@suite.check("unreadable-instance", "a part that is not DICOM is refused (400, or 409 with FailedSOPSequence)",
             "PS3.18 10.5.3.1 Table 10.5.3-1 (400/409); Annex I I.2.2")
def unreadable(ctx: Context) -> None:
    response = stow(ctx, [b"this is not a DICOM file" * 8], note="one part of plain text bytes")
    ctx.expect(response.status_code in (400, 409),
               f"HTTP {response.status_code}: expected 400 or 409 for a body with no storable instance")
    if response.status_code == 409:
        body = error_json(ctx, response, "409 response")
        items = _failed_items(body)
        ctx.expect(items, "409 without FailedSOPSequence (0008,1198)")
        reason = first(items[0], FAILURE_REASON)
        ctx.expect(valid_failure_reason(reason), f"FailureReason {reason!r} is not a PS3.18 I.2.2 code")


@suite.fixture("studies")
def stored_studies(ctx: Context) -> dict:
    """Studies A, B and C (see conformance.data), stored once for the QIDO/WADO/CORS/OHIF suites."""
    from conformance.suites.common import store_study

    for name in ("main", "other", "ohif"):
        store_study(ctx, getattr(ctx.data, name), f"set-up STOW of study {name}")
    time.sleep(0.2)  # servers that index asynchronously
    return {"main": ctx.data.main, "other": ctx.data.other, "ohif": ctx.data.ohif}
