"""OHIF v3's default DICOMweb data source, unchanged, against a real gateway in headless Chromium.

The built OHIF (``npm pack @ohif/app``) is served on loopback with an ``app-config.js`` whose
only data source is the gateway's DICOMweb root; Chromium opens the study list and the viewer
while every request it sends to the gateway is recorded.  The tests assert that the study
shows in the list, that the viewer paints the CT slice (the viewport canvas is not uniformly
black), and that no request to the gateway failed (4xx/5xx, network or CORS error).

OHIF sends the server's bearer token on every request through a small extension in
``app-config.js`` (:data:`tests.e2e.ohif_harness.BEARER_EXTENSION_JS`, as a deployment with the
local issuer does); :func:`test_viewer_opens_a_share_link` opens a link share with OHIF's own
``?token=`` viewer parameter instead, without any configured credentials.

OHIF 3.13.2 fails its whole study list when one QIDO result has ModalitiesInStudy without a
Value (a study whose instances have no Modality); the gateway leaves the attribute out then,
and :func:`test_study_list_with_a_study_without_modality` keeps it so.

Screenshots and the request log go to ``$OHIF_E2E_ARTIFACTS`` (default: pytest's temporary
folder; the path is printed).  Chromium (Debian ``chromium``) and the OHIF build are installed
on first use; when they cannot be, the tests skip, except under ``CI=true`` where they fail.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from pydicom.uid import generate_uid

from tests.e2e import ohif_harness as harness

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # the first run installs Chromium and OHIF

FAMILY = "OHIFE2E"                      # unique in the shared server
PATIENT_NAME = f"{FAMILY}^PHANTOM"
PATIENT_ID = "OHIF-E2E-0001"
STUDY_UID = generate_uid(entropy_srcs=["tests.e2e.test_ohif", "study"])
SERIES_UID = generate_uid(entropy_srcs=["tests.e2e.test_ohif", "series"])
SLICES, SIZE = 24, 256

# The configuration the brief asks for, and the same with the two options OHIF's own shipped
# config sets for its DICOMweb source (unquoted multipart Accept parameters, BulkDataURIs).
VARIANTS = {
    "default": {},
    "ohif-shipped-options": {"omitQuotationForMultipartRequest": True,
                             "bulkDataURI": {"enabled": True, "relativeResolution": "studies"}},
}

# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(server):
    """A synthetic CT study of our own UIDs, stored with STOW-RS."""
    instances = harness.ct_series(study_uid=STUDY_UID, series_uid=SERIES_UID, patient_name=PATIENT_NAME,
                                  patient_id=PATIENT_ID, slices=SLICES, size=SIZE)
    resp = harness.stow(server.dicomweb, instances, headers=server.auth_headers)
    assert resp.status_code == 200, f"STOW: {resp.status_code} {resp.text[:1000]}"
    return STUDY_UID


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("OHIF_E2E_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ohif-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nOHIF screenshots and request logs: {path}")
    return path


# --- helpers -----------------------------------------------------------------------------

def gateway_requests(browser: harness.Browser, server) -> list[harness.Request]:
    return browser.requests_to(server.dicomweb)


def write_log(browser: harness.Browser, server, path: Path) -> None:
    rows = []
    for r in gateway_requests(browser, server):
        headers = {k.lower(): v for k, v in r.response_headers.items()}
        rows.append({"method": r.method, "url": r.url, "status": r.status, "failed": r.failed,
                     "cors_error": r.cors_error, "blocked": r.blocked, "canceled": r.canceled,
                     "type": r.resource_type,
                     "accept": {k.lower(): v for k, v in r.headers.items()}.get("accept"),
                     "content_type": headers.get("content-type"),
                     "allow_origin": headers.get("access-control-allow-origin"),
                     "bytes": r.encoded_bytes, "ms": round((r.ended - r.started) * 1000) if r.ended else None})
    path.write_text(json.dumps({"requests": rows, "console": browser.console}, indent=1))


def assert_no_failed_gateway_request(browser: harness.Browser, server, origin: str) -> None:
    failed = [r for r in gateway_requests(browser, server) if not r.ok]
    if not failed:
        return
    details = []
    for r in failed[:10]:
        text = r.describe()
        body = browser.response_body(r) if r.status is not None else None
        if body is not None:
            text += f"\n  response headers: {r.response_headers}\n  body: {body[:600]!r}"
        text += "\n  " + harness.replay(r, origin)
        details.append(text)
    console = "\n".join(browser.console[-20:])
    pytest.fail(f"{len(failed)} of {len(gateway_requests(browser, server))} gateway requests failed:\n"
                + "\n".join(details) + f"\nbrowser console:\n{console}")


def path_of(r: harness.Request, server) -> str:
    return urlsplit(r.url).path[len(urlsplit(server.dicomweb).path):]


# --- tests -------------------------------------------------------------------------------

def open_study_list(browser: harness.Browser, server, url: str, shot: Path) -> str:
    """Open an OHIF study list page, wait until it has loaded, screenshot it; return its text."""
    browser.goto(url)
    browser.wait_for(harness.LIST_LOADED_JS, timeout=45)
    browser.wait_network_idle(server.dicomweb, idle=0.5, timeout=30)
    browser.evaluate(harness.DISMISS_POPUPS_JS)
    browser.screenshot(shot)
    return browser.evaluate("document.body.innerText")


def empty_modalities_in_study(qido_studies: list[dict]) -> list[str]:
    """Studies whose ModalitiesInStudy (0008,0061) is present without a Value.

    That is valid DICOM JSON, but OHIF 3.13.2's ``getModalities`` reads
    ``ModalitiesInStudy.Value.length`` without a guard, so one such study makes the whole study
    list fail with "Data Source Connection Error: Cannot read properties of undefined
    (reading 'length')".
    """
    return [s.get("0020000D", {}).get("Value", ["?"])[0] for s in qido_studies
            if "00080061" in s and not s["00080061"].get("Value")]


def fail_on_ohif_error(browser: harness.Browser, server, site, text: str, what: str) -> None:
    """Fail when OHIF shows its data source error, naming an empty ModalitiesInStudy if one caused it."""
    if "Data Source Connection Error" not in text:
        return
    assert_no_failed_gateway_request(browser, server, site.url)  # a failed request explains it best
    searches = [r for r in gateway_requests(browser, server) if path_of(r, server) == "/studies"]
    errors = [c for c in browser.console if c.startswith(("console.error", "exception"))]
    culprits = []
    for r in searches:
        body = browser.response_body(r)
        if body:
            culprits += empty_modalities_in_study(json.loads(body))
    message = (f"OHIF could not show {what}: {text[text.index('Data Source Connection Error'):][:300]!r}\n"
               f"QIDO requests: {[r.describe() for r in searches]}\nbrowser errors: {errors[:3]}")
    if culprits:
        message = (f'QIDO /studies returned ModalitiesInStudy (0008,0061) as {{"vr": "CS"}} (no Value) '
                   f"for studies {sorted(set(culprits))}, which OHIF 3.13.2 cannot read.\n{message}")
    pytest.fail(message)


def test_study_list_shows_the_study(server, study, ohif_tools, artifacts):
    chromium, dist = ohif_tools
    with harness.OhifSite(dist, server.dicomweb, token=server.token) as site, harness.Browser(chromium) as browser:
        # The list filtered by patient name: OHIF sends PatientName=*OHIFE2E* (wildcards on).
        text = open_study_list(browser, server, site.url + f"/?patientName={FAMILY}",
                               artifacts / "study-list-filtered.png")
        write_log(browser, server, artifacts / "study-list-filtered-requests.json")
        assert_no_failed_gateway_request(browser, server, site.url)
        fail_on_ohif_error(browser, server, site, text, "the filtered study list")
        assert FAMILY in text and PATIENT_ID in text, text[:2000]
        searches = [r for r in gateway_requests(browser, server) if path_of(r, server) == "/studies"]
        assert any(f"PatientName=*{FAMILY}*" in requests.utils.unquote(r.url) for r in searches), \
            [r.url for r in searches]

        # The unfiltered list, as a user first sees it, with whatever else this server holds.
        browser.requests.clear()
        text = open_study_list(browser, server, site.url + "/", artifacts / "study-list.png")
        write_log(browser, server, artifacts / "study-list-requests.json")
        assert_no_failed_gateway_request(browser, server, site.url)
        fail_on_ohif_error(browser, server, site, text, "the study list")
        total = len(server.http.get(f"{server.dicomweb}/studies", timeout=30).json())
        if total <= 100:  # OHIF asks for limit=101; beyond that our study may be on a later page
            assert FAMILY in text, text[:2000]


def secondary_capture_without_modality(study_uid: str) -> bytes:
    """A small Secondary Capture instance without Modality, as some real files (and
    pydicom's GDCMJ2K_TextGBR.dcm, SC_jpeg_no_color_transform*.dcm) are."""
    import io

    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    sop = generate_uid(entropy_srcs=["tests.e2e.test_ohif", "sc", study_uid])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["tests.e2e.test_ohif", "sc-series", study_uid])
    ds.PatientName, ds.PatientID = "OHIFE2ESC^NOMODALITY", "OHIF-E2E-SC"
    ds.StudyDate, ds.StudyTime, ds.ConversionType = "20240116", "101500", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.add.outer(np.arange(64), np.arange(64)) * 2).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_study_list_with_a_study_without_modality(fresh_server, ohif_tools, artifacts):
    """A study whose instances lack Modality must not break OHIF's study list."""
    chromium, dist = ohif_tools
    fresh_server.start()
    instances = harness.ct_series(study_uid=STUDY_UID, series_uid=SERIES_UID, patient_name=PATIENT_NAME,
                                  patient_id=PATIENT_ID, slices=2, size=64)
    sc_study = generate_uid(entropy_srcs=["tests.e2e.test_ohif", "sc-study"])
    resp = harness.stow(fresh_server.dicomweb, instances + [secondary_capture_without_modality(sc_study)],
                        headers=fresh_server.auth_headers)
    assert resp.status_code == 200, f"STOW: {resp.status_code} {resp.text[:1000]}"
    with harness.OhifSite(dist, fresh_server.dicomweb, token=fresh_server.token) as site, \
            harness.Browser(chromium) as browser:
        text = open_study_list(browser, fresh_server, site.url + "/", artifacts / "study-list-no-modality.png")
        write_log(browser, fresh_server, artifacts / "study-list-no-modality-requests.json")
        assert_no_failed_gateway_request(browser, fresh_server, site.url)
        fail_on_ohif_error(browser, fresh_server, site, text, "a study list with a study without Modality")
        assert FAMILY in text and "OHIFE2ESC" in text, text[:2000]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_viewer_renders_the_ct_slice(server, study, ohif_tools, artifacts, variant):
    chromium, dist = ohif_tools
    with harness.OhifSite(dist, server.dicomweb, token=server.token, **VARIANTS[variant]) as site, \
            harness.Browser(chromium) as browser:
        started = time.monotonic()
        browser.goto(f"{site.url}/viewer?StudyInstanceUIDs={study}")
        # Painted: the viewport canvas has a fair share of non-black pixels with contrast.
        try:
            stats = browser.wait_for(harness.PAINTED_JS, timeout=60, interval=0.5)
        except TimeoutError:
            browser.screenshot(artifacts / f"viewer-{variant}-timeout.png")
            write_log(browser, server, artifacts / f"viewer-{variant}-requests.json")
            assert_no_failed_gateway_request(browser, server, site.url)
            pytest.fail(f"viewport never painted: {browser.evaluate(harness.CANVAS_STATS_JS)}; "
                        f"console: {browser.console[-20:]}")
        painted = time.monotonic() - started
        browser.wait_network_idle(server.dicomweb, idle=0.5, timeout=60)
        idle = time.monotonic() - started
        browser.evaluate(harness.DISMISS_POPUPS_JS)
        left, top, width, height = stats["rect"]
        scrolled = 0.0
        if variant == "default":
            browser.screenshot(artifacts / f"viewer-{variant}-first.png")
            # Scroll with the mouse wheel to the middle of the stack (the teeth) and wait for
            # the new slice to be painted.
            browser.wheel(left + width / 2, top + height / 2, 100, times=SLICES // 2)
            moved = f"(() => {{ const s = {harness.CANVAS_STATS_JS.strip()}; return s && !s.error && " \
                    f"Math.abs(s.mean - {stats['mean']}) > 0.5 && s.std > 8 ? s : null; }})()"
            try:
                stats = browser.wait_for(moved, timeout=20, interval=0.3)
            except TimeoutError:
                browser.screenshot(artifacts / f"viewer-{variant}-scroll-timeout.png")
                write_log(browser, server, artifacts / f"viewer-{variant}-requests.json")
                assert_no_failed_gateway_request(browser, server, site.url)
                raise
            scrolled = time.monotonic() - started
            browser.wait_network_idle(server.dicomweb, idle=0.5, timeout=30)
        time.sleep(0.3)  # let the overlay text catch up
        shot = browser.screenshot(artifacts / f"viewer-{variant}.png")
        write_log(browser, server, artifacts / f"viewer-{variant}-requests.json")
        reqs = gateway_requests(browser, server)
        print(f"\n[{variant}] first paint {painted:.1f} s, network idle {idle:.1f} s"
              + (f", middle slice {scrolled:.1f} s" if scrolled else "")
              + f"; canvas {stats}; {len(reqs)} gateway requests; screenshot {shot}")

        assert_no_failed_gateway_request(browser, server, site.url)
        paths = [(r.method, path_of(r, server)) for r in reqs]
        assert ("GET", f"/studies/{study}/series") in paths, paths
        assert ("GET", f"/studies/{study}/series/{SERIES_UID}/metadata") in paths, paths
        frames = [r for r in reqs if r.method == "GET" and "/frames/" in r.url]
        assert frames, f"OHIF fetched no frame: {paths}"
        for r in frames:
            ctype = {k.lower(): v for k, v in r.response_headers.items()}.get("content-type", "")
            assert ctype.startswith("multipart/related"), (r.url, ctype)
        # Every answer carries CORS headers (the page is on another origin than the gateway).
        for r in reqs:
            headers = {k.lower(): v for k, v in r.response_headers.items()}
            assert headers.get("access-control-allow-origin") in ("*", site.url), (r.describe(), headers)

        # The screenshot agrees with the canvas: the middle of the viewport is not black.
        from PIL import Image

        with Image.open(shot) as img:
            middle = img.convert("L").crop((int(left + width * 0.25), int(top + height * 0.25),
                                            int(left + width * 0.75), int(top + height * 0.75)))
            lit = sum(middle.histogram()[25:]) / (middle.width * middle.height)
        assert lit > 0.2, f"the middle of the viewport in {shot} is black ({lit:.0%} lit)"


def test_viewer_opens_a_share_link(server, study, ohif_tools, artifacts):
    """A link share in OHIF without any configured credentials: OHIF's own ``?token=`` viewer
    parameter sends the link token as ``Authorization: Bearer`` on every request."""
    chromium, dist = ohif_tools
    made = server.http.post(f"{server.url}/api/v1/shares", timeout=30, json={
        "study": study, "targets": [{"type": "link"}], "permissions": ["view"], "ttl": 3600})
    assert made.status_code == 201, made.text
    token = made.json()["shares"][0]["token"]
    with harness.OhifSite(dist, server.dicomweb) as site, harness.Browser(chromium) as browser:
        browser.goto(f"{site.url}/viewer?StudyInstanceUIDs={study}&token={token}")
        try:
            browser.wait_for(harness.PAINTED_JS, timeout=60, interval=0.5)
        except TimeoutError:
            browser.screenshot(artifacts / "viewer-share-link-timeout.png")
            write_log(browser, server, artifacts / "viewer-share-link-requests.json")
            assert_no_failed_gateway_request(browser, server, site.url)
            pytest.fail(f"viewport never painted: {browser.evaluate(harness.CANVAS_STATS_JS)}")
        browser.wait_network_idle(server.dicomweb, idle=0.5, timeout=60)
        browser.screenshot(artifacts / "viewer-share-link.png")
        write_log(browser, server, artifacts / "viewer-share-link-requests.json")
        assert_no_failed_gateway_request(browser, server, site.url)
        sent = [r for r in gateway_requests(browser, server) if r.method == "GET"]
        assert sent and all({k.lower(): v for k, v in r.headers.items()}.get("authorization") == f"Bearer {token}"
                            for r in sent), [r.describe() for r in sent[:5]]
        assert "token=" not in browser.evaluate("window.location.href")  # OHIF takes it out of the address
