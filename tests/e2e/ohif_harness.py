"""Helpers to run the real OHIF v3 viewer against a gateway in headless Chromium.

* :func:`ensure_chromium` finds Debian's ``chromium`` (installing it with apt-get when it is
  missing and we are root or have password-less sudo).
* :func:`ensure_ohif` gets the *built* OHIF site with ``npm pack @ohif/app@VERSION`` into a
  cache folder (``~/.cache/gateway-tests/ohif/VERSION/dist``, or under
  ``$GATEWAY_TEST_CACHE``) and extracts its ``dist`` folder once.
* :class:`OhifSite` serves that folder on loopback, falling back to ``index.html`` for
  unknown paths (OHIF is a single-page app served from the site root), and answers
  ``/app-config.js`` with OHIF's shipped config plus an override whose only data source is
  the gateway's DICOMweb root.
* :class:`Browser` drives headless Chromium over the DevTools protocol on a pipe
  (``--remote-debugging-pipe``), so no Python package beyond the standard library is
  needed; it records every network request of the page and of its workers.

All failures to obtain a tool raise :class:`Unavailable`; the test decides whether that
skips (developer machine) or fails (CI).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.helpers import multipart_body, multipart_content_type

OHIF_VERSION = os.environ.get("OHIF_VERSION", "3.13.2")
OHIF_PACKAGE = "@ohif/app"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
APT_PACKAGES = ("chromium",)


class Unavailable(RuntimeError):
    """A tool the test needs (browser, OHIF build) is missing and could not be installed."""


def cache_root() -> Path:
    """The tests' download cache: ``$GATEWAY_TEST_CACHE`` or ``~/.cache/gateway-tests``."""
    return Path(os.environ.get("GATEWAY_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gateway-tests"))


def cache_dir() -> Path:
    return cache_root() / "ohif" / OHIF_VERSION


@contextlib.contextmanager
def file_lock(path: Path):
    """Serialise installs between concurrent test processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# --- tools -------------------------------------------------------------------------------

def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


def apt_install(packages: tuple[str, ...]) -> None:
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and _run(["sudo", "-n", "true"], 30).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        raise Unavailable(f"Debian packages {' '.join(packages)} are missing and we are not root: "
                          f"run `apt-get update && apt-get install -y {' '.join(packages)}` as root")
    if not shutil.which("apt-get"):
        raise Unavailable(f"no apt-get to install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", *packages]
    res = _run(install, 900, env=env)
    if res.returncode != 0:  # empty or stale package lists on a fresh machine
        _run([*prefix, "apt-get", "update", "-q"], 600, env=env)
        res = _run(install, 900, env=env)
    if res.returncode != 0:
        raise Unavailable(f"`{' '.join(install)}` failed ({res.returncode}): {res.stderr[-2000:]}")


def ensure_chromium() -> str:
    """The path of a Chromium binary, installed with apt-get when it is missing."""
    path = find_chromium()
    if path:
        return path
    with file_lock(cache_root() / "apt.lock"):
        path = find_chromium()
        if not path:
            apt_install(APT_PACKAGES)
            path = find_chromium()
    if not path:
        raise Unavailable(f"{' '.join(APT_PACKAGES)} installed but no chromium binary found")
    return path


def ensure_ohif() -> Path:
    """The ``dist`` folder of the built OHIF app, fetched with ``npm pack`` once and cached."""
    root = cache_dir()
    dist = root / "dist"
    if (dist / "index.html").is_file():
        return dist
    with file_lock(root / ".lock"):
        if (dist / "index.html").is_file():
            return dist
        tgz = root / f"ohif-app-{OHIF_VERSION}.tgz"
        if not tgz.is_file():
            npm = shutil.which("npm")
            if not npm:
                apt_install(("npm",))
                npm = shutil.which("npm")
            if not npm:
                raise Unavailable("npm is missing (Debian package `npm`)")
            res = _run([npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--json", "--silent"], 900,
                       cwd=root)
            if res.returncode != 0:
                raise Unavailable(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {res.stderr[-2000:]}")
            packed = root / f"ohif-app-{OHIF_VERSION}.tgz"
            if not packed.is_file():
                raise Unavailable(f"npm pack did not write {packed}: {res.stdout[-500:]}")
        staging = Path(tempfile.mkdtemp(prefix="dist-", dir=root))
        try:
            with tarfile.open(tgz) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                    tar.extractall(staging, members=members, filter="data")
                else:
                    if any(m.issym() or m.islnk() or ".." in Path(m.name).parts for m in members):
                        raise Unavailable(f"{tgz} has links or parent paths: not extracting it")
                    tar.extractall(staging, members=members)
            (staging / "package" / "dist").rename(dist)
        except (OSError, tarfile.TarError) as exc:
            raise Unavailable(f"cannot extract {tgz}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dist


# --- OHIF site ---------------------------------------------------------------------------

def data_source(dicomweb_root: str, **overrides) -> dict:
    """OHIF's DICOMweb data source pointed at the gateway (OHIF's defaults otherwise)."""
    configuration = {
        "friendlyName": "Gateway DICOMweb",
        "name": "gateway",
        "qidoRoot": dicomweb_root,
        "wadoRoot": dicomweb_root,
        "wadoUriRoot": dicomweb_root,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": False,
        **overrides,
    }
    return {"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "gateway", "configuration": configuration}


# How an OHIF deployment sends the gateway's bearer token without an OIDC login: a small
# extension, inline in app-config.js, gives OHIF's userAuthenticationService the header that
# every DICOMweb request (QIDO, WADO metadata, frames, thumbnails) then carries. (With
# Keycloak, OHIF's own `oidc` configuration does the same with the user's access token; a
# viewer URL may also carry one, `/viewer?StudyInstanceUIDs=...&token=...`.)
BEARER_EXTENSION_JS = """
window.config.extensions = [...(window.config.extensions || []), {
  id: 'gateway-bearer-token',
  preRegistration({ servicesManager }) {
    servicesManager.services.userAuthenticationService.setServiceImplementation({
      getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + %s }),
    });
  },
}];
"""


def app_config(dist: Path, dicomweb_root: str, *, token: str | None = None, oidc: list[dict] | None = None,
               **overrides) -> str:
    """OHIF's shipped ``app-config.js`` followed by an override of its data sources (and,
    with ``token``, the extension that sends it; with ``oidc``, OHIF's own ``oidc``
    configuration: OHIF logs the user in and sends the access token)."""
    shipped = (dist / "app-config.js").read_text()
    source = json.dumps([data_source(dicomweb_root, **overrides)], indent=2)
    auth = BEARER_EXTENSION_JS % json.dumps(token) if token else ""
    if oidc:
        auth += f"\nwindow.config.oidc = {json.dumps(oidc, indent=2)};\n"
    return shipped + auth + f"""
// --- gateway e2e override: the gateway is the only data source -----------------------
window.config.dataSources = {source};
window.config.defaultDataSourceName = 'gateway';
window.config.showStudyList = true;
window.__gatewayHttpErrors = [];
window.config.httpErrorHandler = error => {{
  window.__gatewayHttpErrors.push(String(error && (error.status || error.message || error)));
  console.warn('OHIF http error', error && error.status);
}};
"""


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".css": "text/css", ".svg": "image/svg+xml",
                      ".woff2": "font/woff2"}
    config_js: bytes = b""

    def log_message(self, format, *args):  # noqa: A002  (quiet)
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self):
        path = unquote(urlsplit(self.path).path)
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.config_js)))
            self.end_headers()
            return io.BytesIO(self.config_js)
        local = Path(self.translate_path(self.path))
        if not local.is_file():  # single-page app: every unknown path is the app
            self.path = "/index.html"
        return super().send_head()


class OhifSite:
    """The built OHIF served on a loopback port (``port``, or a free one), its data source being
    ``dicomweb_root``."""

    def __init__(self, dist: Path, dicomweb_root: str, *, token: str | None = None, oidc: list[dict] | None = None,
                 port: int = 0, **overrides):
        config = app_config(dist, dicomweb_root, token=token, oidc=oidc, **overrides).encode()
        handler = type("Handler", (_SiteHandler,), {"config_js": config})
        self._httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", port), functools.partial(handler, directory=str(dist)))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "OhifSite":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# --- Chromium over the DevTools protocol -------------------------------------------------

@dataclass
class Request:
    """One network request the browser made, as the DevTools protocol reported it."""
    id: str
    url: str
    method: str
    headers: dict
    resource_type: str = ""
    status: int | None = None
    response_headers: dict = field(default_factory=dict)
    mime_type: str = ""
    failed: str = ""          # errorText of Network.loadingFailed
    blocked: str = ""         # blockedReason
    cors_error: str = ""      # corsErrorStatus.corsError
    canceled: bool = False
    finished: bool = False
    encoded_bytes: int = 0
    started: float = 0.0
    ended: float = 0.0
    session: str = ""

    @property
    def done(self) -> bool:
        return self.finished or bool(self.failed)

    @property
    def ok(self) -> bool:
        return self.finished and not self.failed and self.status is not None and self.status < 400

    def describe(self) -> str:
        state = f"{self.status}" if self.status is not None else "no response"
        if self.failed:
            state += f" FAILED {self.failed}"
            if self.cors_error:
                state += f" (CORS: {self.cors_error})"
            if self.blocked:
                state += f" (blocked: {self.blocked})"
        elif not self.finished:
            state += " (unfinished)"
        accept = {k.lower(): v for k, v in self.headers.items()}.get("accept", "")
        return f"{self.method} {self.url} -> {state}" + (f"  [Accept: {accept}]" if accept else "")


class CDPError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (NUL-separated JSON)."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-dev-shm-usage", "--no-default-browser-check",
             "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--password-store=basic",
             "--use-mock-keychain", "--disable-features=Translate,MediaRouter,OptimizationHints",
             "--enable-unsafe-swiftshader",  # WebGL on the CPU (no GPU here), for trusted local pages
             "--remote-debugging-pipe")

    def __init__(self, executable: str, *, width: int = 1600, height: int = 1000,
                 extra_flags: tuple[str, ...] = ()):
        self.executable = executable
        self.width, self.height = width, height
        self.extra_flags = extra_flags
        self.requests: dict[str, Request] = {}
        self.console: list[str] = []
        self._lock = threading.Condition()
        self._results: dict[int, dict] = {}
        self._next_id = 0
        self._closed = False
        self.session = ""

    # lifecycle
    def __enter__(self) -> "Browser":
        self._tmp = Path(tempfile.mkdtemp(prefix="gateway-chromium-"))
        self._profile = self._tmp / "profile"
        self._profile.mkdir()
        self.log_path = self._tmp / "chromium.log"
        self._log_tail = ""
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # Move the child's ends above 9 so that placing them on fds 3 and 4 cannot clobber them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_child_r, from_child_w)]
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = high
        args = [self.executable, *self.FLAGS, *self.extra_flags, f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        # The protocol pipe must be the child's fds 3 (commands in) and 4 (replies out): a tiny
        # trampoline puts them there and execs Chromium (no preexec_fn in a threaded process).
        trampoline = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
                      "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-c", trampoline, str(to_child_r),
                                           str(from_child_w), *args],
                                          pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self._attach()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send("Browser.close", timeout=5)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(timeout=10)
        self._closed = True
        for fd in (self._to_child_w, self._from_child_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log_tail = self.log()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log(self) -> str:
        """The end of Chromium's own output (kept after the browser is closed)."""
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return self._log_tail

    # protocol
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child_r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._closed = True
                    self._lock.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        self._results[msg["id"]] = msg
                        self._lock.notify_all()
                else:
                    try:
                        self._on_event(msg.get("sessionId", ""), msg["method"], msg.get("params", {}))
                    except Exception as exc:  # never kill the reader
                        self.console.append(f"[harness] event handler error: {exc!r}")

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30) -> dict:
        with self._lock:
            self._next_id += 1
            msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        session = self.session if session is None else session
        if session:
            msg["sessionId"] = session
        os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while msg_id not in self._results:
                if self._closed:
                    raise CDPError(f"browser exited during {method}: {self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"{method} timed out after {timeout} s")
                self._lock.wait(left)
            reply = self._results.pop(msg_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _attach(self) -> None:
        deadline = time.monotonic() + 30
        page = None
        while page is None:
            targets = self.send("Target.getTargets", session="")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise CDPError("no page target")
                time.sleep(0.1)
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 session="")["sessionId"]
        self._enable(self.session)
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def _enable(self, session: str, *, worker: bool = False) -> None:
        self.send("Network.enable", session=session)
        self.send("Network.setCacheDisabled", {"cacheDisabled": True}, session=session)
        self.send("Runtime.enable", session=session)
        if not worker:
            self.send("Log.enable", session=session)
        # Workers (OHIF decodes in web workers; some fetch there): attach and watch them too.
        self.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True,
                                           "flatten": True}, session=session)

    def _on_event(self, session: str, method: str, p: dict) -> None:
        now = time.monotonic()
        if method == "Target.attachedToTarget":
            child = p["sessionId"]

            def prepare():
                try:
                    if p["targetInfo"]["type"] in ("worker", "shared_worker", "service_worker", "iframe"):
                        self._enable(child, worker=p["targetInfo"]["type"] != "iframe")
                finally:
                    with contextlib.suppress(Exception):
                        self.send("Runtime.runIfWaitingForDebugger", session=child)
            threading.Thread(target=prepare, daemon=True).start()  # send() must not block the reader
        elif method == "Network.requestWillBeSent":
            req = p["request"]
            key = f"{session}:{p['requestId']}"
            old = self.requests.get(key)
            if old is not None:  # a redirect reuses the request id: keep the hop on its own
                if "redirectResponse" in p:
                    old.status = p["redirectResponse"]["status"]
                    old.response_headers = p["redirectResponse"].get("headers", {})
                old.finished, old.ended = True, now
                self.requests[f"{key}:hop{now}"] = old
            self.requests[key] = Request(
                id=p["requestId"], url=req["url"], method=req["method"], headers=req.get("headers", {}),
                resource_type=p.get("type", ""), started=now, session=session)
        elif method == "Network.responseReceived":
            r = self.requests.get(f"{session}:{p['requestId']}")
            if r:
                r.status = p["response"]["status"]
                r.response_headers = p["response"].get("headers", {})
                r.mime_type = p["response"].get("mimeType", "")
        elif method == "Network.loadingFinished":
            r = self.requests.get(f"{session}:{p['requestId']}")
            if r:
                r.finished, r.ended, r.encoded_bytes = True, now, int(p.get("encodedDataLength", 0))
        elif method == "Network.loadingFailed":
            r = self.requests.get(f"{session}:{p['requestId']}")
            if r:
                r.failed = p.get("errorText") or "failed"
                r.canceled = bool(p.get("canceled"))
                r.blocked = p.get("blockedReason", "") or ""
                r.cors_error = (p.get("corsErrorStatus") or {}).get("corsError", "")
                r.ended = now
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(f"console.{p['type']}: {text[:500]}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            self.console.append(f"exception: {text[:800]}")
        elif method == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            e = p["entry"]
            self.console.append(f"log.{e['level']}: {e.get('text', '')[:500]} {e.get('url', '')}")

    # page helpers
    def goto(self, url: str, timeout: float = 30) -> None:
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")

    def evaluate(self, expression: str, timeout: float = 30):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.2):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CDPError):
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout} s for {expression!r} (last value {value!r})")

    def requests_to(self, prefix: str) -> list[Request]:
        return sorted((r for r in list(self.requests.values()) if r.url.startswith(prefix)),
                      key=lambda r: r.started)

    def wait_network_idle(self, prefix: str = "", idle: float = 1.0, timeout: float = 30) -> None:
        """Wait until no request (to ``prefix``) has been in flight or started for ``idle`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reqs = self.requests_to(prefix)
            now = time.monotonic()
            busy = [r for r in reqs if not r.done]
            last = max((max(r.started, r.ended) for r in reqs), default=0.0)
            if not busy and now - last >= idle:
                return
            time.sleep(0.1)
        pending = [r.describe() for r in self.requests_to(prefix) if not r.done]
        raise TimeoutError(f"network not idle after {timeout} s; pending: {pending[:10]}")

    def wheel(self, x: float, y: float, delta_y: float, times: int = 1, pause: float = 0.05) -> None:
        """Turn the mouse wheel over (x, y) ``times`` times (OHIF scrolls one slice per turn)."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for _ in range(times):
            self.send("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": x, "y": y,
                                                   "deltaX": 0, "deltaY": delta_y})
            time.sleep(pause)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=30)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def response_body(self, request: Request) -> bytes | None:
        with contextlib.suppress(CDPError):
            r = self.send("Network.getResponseBody", {"requestId": request.id}, session=request.session)
            return base64.b64decode(r["body"]) if r.get("base64Encoded") else r["body"].encode()
        return None


# JS run in the page: statistics of the largest viewport canvas's own pixels.
CANVAS_STATS_JS = r"""
(() => {
  const canvases = [...document.querySelectorAll('canvas')]
    .filter(c => c.width > 64 && c.height > 64 && c.getBoundingClientRect().width > 64);
  if (!canvases.length) return null;
  canvases.sort((a, b) => b.width * b.height - a.width * a.height);
  const c = canvases[0];
  let data;
  try {
    const ctx = c.getContext('2d');
    if (!ctx) return {error: 'not a 2d canvas', cls: c.className};
    data = ctx.getImageData(0, 0, c.width, c.height).data;
  } catch (e) { return {error: String(e), cls: c.className}; }
  let n = 0, sum = 0, sum2 = 0, lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    n++; sum += y; sum2 += y * y; if (y > 24) lit++;
  }
  const mean = sum / n, r = c.getBoundingClientRect();
  return {cls: c.className, width: c.width, height: c.height, mean,
          std: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), lit: lit / n,
          rect: [r.left, r.top, r.width, r.height]};
})()
"""


# JS run in the page: the canvas statistics once the viewport shows an image (a fair share
# of non-black pixels with contrast), else null.
PAINTED_JS = f"(() => {{ const s = {CANVAS_STATS_JS.strip()}; return s && !s.error && s.lit > 0.05 && s.std > 8 ? s : null; }})()"

# JS run in the page: true once OHIF's study list has loaded (or shows its data source error).
LIST_LOADED_JS = ("document.body && (/\\d+\\s*-\\s*\\d+ of \\d+|No studies/i.test(document.body.innerText)"
                  " || document.body.innerText.includes('Data Source Connection Error'))")

# JS run in the page: close OHIF's first-visit pop-ups; the number closed.
DISMISS_POPUPS_JS = r"""
(() => {
  let n = 0;
  for (const el of document.querySelectorAll('button, a, [role=button]')) {
    const text = (el.innerText || '').trim();
    if (text === 'Skip all' || text === 'Confirm and hide') { el.click(); n++; }
  }
  return n;
})()
"""


# --- test data ---------------------------------------------------------------------------

def ct_series(*, study_uid: str, series_uid: str, patient_name: str, patient_id: str,
              slices: int = 24, size: int = 256) -> list[bytes]:
    """A small synthetic CT series as Part 10 bytes: the project's CBCT phantom when
    ``gateway.synthetic`` is there, else a plain pydicom-built phantom."""
    try:
        from gateway.synthetic import cbct_series, to_bytes
    except ImportError:
        return _plain_ct_series(study_uid=study_uid, series_uid=series_uid, patient_name=patient_name,
                                patient_id=patient_id, slices=slices, size=size)
    return [to_bytes(ds) for ds in cbct_series(slices, size, study_uid=study_uid, series_uid=series_uid,
                                               patient_name=patient_name, patient_id=patient_id)]


def _plain_ct_series(*, study_uid, series_uid, patient_name, patient_id, slices, size) -> list[bytes]:
    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = []
    for i in range(slices):
        sop = generate_uid(entropy_srcs=[series_uid, str(i)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "frame"])
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240115", "093000", "1", ""
        ds.ReferringPhysicianName, ds.StudyDescription = "", "Synthetic CT phantom"
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = "CT", 1, "Phantom", i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-80, -80, i * 0.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [160 / size, 160 / size], 0.5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = -1024, 1, 300, 2000
        r = np.hypot(xx, yy * 1.2)
        img = np.where(r < 0.42, 1064, 24) + np.where((r > 0.36) & (r < 0.42), 1200, 0)
        img = img + np.where(np.hypot(xx - 0.1 * np.cos(i / 4), yy) < 0.08, 1500, 0)
        ds.PixelData = img.astype(np.uint16).tobytes()
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def stow(dicomweb_root: str, instances: list[bytes], timeout: float = 60, *, headers: dict | None = None):
    """Store Part 10 instances with one STOW-RS request; return the ``requests`` response."""
    import requests

    boundary = "gateway-ohif-e2e-boundary"
    body = multipart_body(instances, boundary)
    return requests.post(f"{dicomweb_root}/studies", data=body, timeout=timeout, headers={
        "Content-Type": multipart_content_type(boundary),
        "Accept": "application/dicom+json", **(headers or {})})


def replay(request: Request, origin: str, timeout: float = 30) -> str:
    """Send a failed browser request again with ``requests`` and describe the answer."""
    import requests

    headers = {k: v for k, v in request.headers.items() if not k.startswith(":")}
    headers.setdefault("Origin", origin)
    try:
        resp = requests.request(request.method, request.url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        return f"replay of {request.method} {request.url} failed: {exc!r}"
    body = resp.content[:600]
    return (f"replayed {request.method} {request.url} with {headers}\n  -> {resp.status_code} "
            f"{dict(resp.headers)}\n  body: {body!r}")
