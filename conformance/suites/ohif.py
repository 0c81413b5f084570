"""OHIF v3's call sequence (DicomWebDataSource, lazy study load): list, open, pixels, store.

The requests are the ones OHIF v3 sends, header for header (read from OHIF v3's
DicomWebDataSource: study list, series, series metadata in parallel, frames with
``transfer-syntax=*``, STOW of measurements); each step is a check so a report says where a
viewer breaks.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conformance.suites.base import Context, Suite
from conformance.suites.common import (DICOM_JSON, OHIF_FRAME_ACCEPT, REF_SOP_INSTANCE, REFERENCED_SEQ,
                                       SERIES_UID, SOP_UID, STUDY_UID, expect_dicom_json, expect_status,
                                       parse_multipart, qido, qido_results, stow, text, uids, values)
from conformance.suites.wado import VIEWER_ATTRIBUTES

suite = Suite("ohif", "OHIF v3 call sequence", needs="dicomweb")

OHIF = "OHIF v3 DicomWebDataSource"


def _study(ctx: Context):
    return ctx.fixture("studies")["ohif"]


@suite.check("study-list", "the study list query OHIF sends finds the study, newest filters applied",
             f"PS3.18 10.6 / 8.3.4; {OHIF}", level="interop")
def study_list(ctx: Context) -> None:
    study = _study(ctx)
    pairs = [("PatientName", f"*{ctx.data.token}*"), ("StudyDate", "20240101-20241231"), ("limit", "101"),
             ("offset", "0"), ("fuzzymatching", "false"), ("includefield", "00081030,00080060,00080090,00100030")]
    results = qido_results(ctx, qido(ctx, "studies", pairs), "OHIF study list")
    found = [r for r in results if text(r, STUDY_UID) == study.uid]
    ctx.expect(found, f"the study list does not contain study {study.uid} ({len(results)} results)")
    row = found[0]
    ctx.expect(text(row, "00081030") == f"OHIF {ctx.data.token}", "StudyDescription (includefield 00081030) missing")
    ctx.expect(values(row, "00080061"), "ModalitiesInStudy (0008,0061) has no value: OHIF reads it unguarded")
    ctx.expect(ctx.fixture("studies")["other"].uid not in uids(results, STUDY_UID),
               "the 2023 study is listed although StudyDate=20240101-20241231")


@suite.check("open-study", "series list, then every series' metadata in parallel",
             f"PS3.18 10.6.1, 10.4.1.1.2; {OHIF}", level="interop")
def open_study(ctx: Context) -> None:
    study = _study(ctx)
    series = qido_results(ctx, qido(ctx, f"studies/{study.uid}/series"), "series of the study")
    ctx.expect(set(uids(series, SERIES_UID)) >= set(study.series()), "the series list lacks a stored series")

    def metadata(series_uid: str):
        return ctx.web.get(f"studies/{study.uid}/series/{series_uid}/metadata", headers={"Accept": DICOM_JSON})

    with ThreadPoolExecutor(6) as pool:
        responses = dict(zip(study.series(), pool.map(metadata, study.series())))
    for series_uid, response in responses.items():
        expect_status(ctx, response, 200, f"metadata of series {series_uid}")
        body = expect_dicom_json(ctx, response, f"metadata of series {series_uid}")
        ctx.expect(len(body) == len(study.series()[series_uid]), f"metadata of {series_uid}: {len(body)} instances")
        for item in body:
            missing = [k for k, tag in VIEWER_ATTRIBUTES.items() if not (item.get(tag) or {}).get("Value")]
            ctx.expect(not missing, f"metadata of {text(item, SOP_UID)} lacks {', '.join(missing)}")


@suite.check("frames", "one frame request per image with OHIF's Accept, 6 in flight",
             f"PS3.18 Table 10.3-2 (Frames: M); {OHIF}", level="interop")
def frames(ctx: Context) -> None:
    study = _study(ctx)

    def fetch(item):
        return item, ctx.web.get(f"{item.path}/frames/1", headers={"Accept": OHIF_FRAME_ACCEPT})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(fetch, study.instances))
    for item, response in results:
        expect_status(ctx, response, 200, f"frame 1 of {item.sop}")
        parts = parse_multipart(response.headers.get("Content-Type", ""), response.content)
        ctx.expect(len(parts) == 1 and parts[0].body == item.frame_bytes(1), f"frame 1 of {item.sop} differs")


@suite.check("store-measurement", "a measurement (SR) stored the way OHIF/dcmjs stores it shows in the study",
             f"PS3.18 10.5; {OHIF}", level="interop")
def store_measurement(ctx: Context) -> None:
    study = _study(ctx)
    sr = ctx.data.measurement(study)
    response = stow(ctx, [sr], study=study.uid, content_type="multipart/related; type=application/dicom; "
                                                              "boundary={boundary}")
    expect_status(ctx, response, 200, "STOW of the SR")
    body = expect_dicom_json(ctx, response, "STOW of the SR")
    ctx.expect(sr.sop in {text(i, REF_SOP_INSTANCE) for i in values(body, REFERENCED_SEQ)},
               "the SR is not in ReferencedSOPSequence")
    series = qido_results(ctx, qido(ctx, f"studies/{study.uid}/series"), "series after the SR")
    ctx.expect(sr.series in uids(series, SERIES_UID), "the SR's series is not listed in the study")
