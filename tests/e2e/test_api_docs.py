"""The API docs page in headless Chromium with no network but loopback (a hospital network
reaches no CDN): Swagger UI comes from the gateway itself, renders every operation, and the
browser makes no request that fails or leaves the gateway."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.e2e import ohif_harness as harness
from tests.services import missing_service

pytestmark = pytest.mark.e2e

OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"  # no name resolves: no CDN


def test_the_api_docs_page_works_offline(server, tmp_path):
    try:
        chromium = harness.ensure_chromium()
    except harness.Unavailable as exc:
        missing_service(str(exc))
    with harness.Browser(chromium, extra_flags=(OFFLINE,)) as browser:
        browser.goto(server.url + "/api/docs")
        operations = browser.wait_for("document.querySelectorAll('.opblock').length", timeout=60)
        assert operations > 30, operations
        assert browser.evaluate("!!document.querySelector('.btn.authorize')")  # the bearer scheme
        browser.wait_network_idle(idle=1.0, timeout=30)
        requests = [r for r in browser.requests.values() if not r.url.startswith("data:")]
        assert requests and all(r.ok for r in requests), [r.describe() for r in requests if not r.ok]
        assert all(r.url.startswith((server.url + "/api/", server.url + "/favicon.ico")) for r in requests), [
            r.url for r in requests]
        shot = Image.open(browser.screenshot(tmp_path / "docs.png")).convert("L")
        low, high = shot.getextrema()
        assert high - low > 100 and len(set(shot.getdata())) > 20, "the page is blank"
