"""A seeded fuzz run against any DICOMweb server (and DIMSE peer): malformed Part 10 files by
STOW-RS and C-STORE, broken multipart and chunked bodies, odd QIDO and WADO requests.

    python -m conformance.fuzz --dicomweb URL [--token T] [--dimse AET@HOST:PORT] \\
        [--seed S] [--cases N | --seconds T] [--case K]

Case ``k`` of seed ``s`` is made from ``random.Random(f"{s}:{k}")`` alone, so ``--seed s
--case k`` replays it. What is asserted of every case:

- an answer within the timeout (no hang), never a 5xx;
- a 4xx body that explains: a JSON error with a ``message``, or, for STOW-RS, DICOM JSON
  whose Failed SOP Sequence gives each failed instance a FailureReason;
- the store unchanged by what was refused: an instance a response acknowledges can be found
  by QIDO, one it lists as failed cannot, and a request refused as a whole stored nothing;
  the good instance sent beside a malformed one is stored;
- over DIMSE: every C-STORE gets a status (never an aborted association), the association
  stays usable, and the listener answers C-ECHO at the end.

Exit status 1 when a case failed; each failure prints its seed and case number.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import random
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from pydicom.uid import generate_uid

from conformance import mutations
from conformance.targets import DimseTarget, parse_ae_address

HTTP_KINDS = {"stow-file": 4, "stow-single": 2, "multipart": 2, "chunked": 2, "qido": 2, "qido-raw": 1, "wado": 2}
TIMEOUT = 30.0
_DICOM_JSON_FAILED, _DICOM_JSON_STORED = "00081198", "00081199"


@dataclass
class Finding:
    seed: str
    case: int
    kind: str
    detail: str  # the mutations or request of the case
    problem: str

    def __str__(self) -> str:
        return f"seed {self.seed} case {self.case} ({self.kind}: {self.detail}): {self.problem}"


@dataclass
class Summary:
    cases: int = 0
    kinds: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"{self.cases} cases in {self.seconds:.0f} s; by kind: "
                 + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())),
                 "answers: " + ", ".join(f"{k} {n}" for k, n in sorted(self.statuses.items(), key=str)),
                 f"{len(self.findings)} failed"]
        return "\n".join(lines + [str(f) for f in self.findings])


class _Failed(Exception):
    pass


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Fuzzer:
    def __init__(self, dicomweb: str, *, token: str | None = None, dimse: DimseTarget | None = None,
                 seed: str = "0", timeout: float = TIMEOUT):
        self.base = dicomweb.rstrip("/")
        split = urlsplit(self.base)
        self.host, self.port = split.hostname, split.port or 80
        self.path = split.path
        self.token, self.dimse, self.seed, self.timeout = token, dimse, str(seed), timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.sources = mutations.source_files()
        self.summary = Summary()

    # --- running ----------------------------------------------------------------------------
    def rng(self, case: int) -> random.Random:
        return random.Random(f"{self.seed}:{case}")

    def run(self, *, cases: int | None = None, seconds: float | None = None, first: int = 0,
            dimse_share: float = 0.15) -> Summary:
        """Cases ``first``, ``first+1``… until ``cases`` are done or ``seconds`` are spent; about
        ``dimse_share`` of them by C-STORE when a DIMSE peer is given."""
        started = time.monotonic()
        case = first
        assoc = None
        try:
            while (cases is None or case - first < cases) and (seconds is None or time.monotonic() - started < seconds):
                rng = self.rng(case)
                by_dimse = rng.random() < dimse_share  # drawn always: a replay without DIMSE stays the same
                try:
                    if self.dimse is not None and by_dimse:
                        assoc = self._dimse_case(case, rng, assoc)
                    else:
                        self.http_case(case, rng)
                except Exception as exc:  # a bug of the fuzzer itself: say which case to replay
                    raise RuntimeError(f"seed {self.seed} case {case}: the fuzzer failed: {exc!r}") from exc
                case += 1
        finally:
            if assoc is not None:
                self._release(assoc)
        if self.dimse is not None:
            self._echo(case)
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def http_case(self, case: int, rng: random.Random | None = None) -> None:
        rng = rng or self.rng(case)
        kind = rng.choices(list(HTTP_KINDS), weights=list(HTTP_KINDS.values()))[0]
        self.summary.cases += 1
        self.summary.kinds[kind] += 1
        detail = ""
        try:
            detail = getattr(self, "_" + kind.replace("-", "_"))(rng)
        except _Failed as exc:
            detail, problem = exc.args
            self.summary.findings.append(Finding(self.seed, case, kind, detail, problem))
        except (requests.Timeout, socket.timeout):
            self.summary.findings.append(Finding(self.seed, case, kind, detail, f"no answer within {self.timeout} s"))
        except (requests.ConnectionError, ConnectionError) as exc:
            self.summary.findings.append(Finding(self.seed, case, kind, detail, f"connection failed: {exc}"))

    # --- HTTP plumbing ----------------------------------------------------------------------
    def _answer(self, response: requests.Response) -> Answer:
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)

    def _raw(self, request: bytes) -> Answer:
        """One request written as given on a new connection, and its answer. The client then
        closes its side: a body that promised more bytes than it has ends there (a server
        waiting for the rest of a body that is still open is not hanging)."""
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            try:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before reading it all
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed with no answer (got {data[:80]!r})")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "-1"))
            while length < 0 or len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            return Answer(status, headers, body[:length] if length >= 0 else body)

    def _head(self, method: str, target: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {self.path}{target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close"]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _explains(self, answer: Answer, detail: str, *, stow: bool = False) -> None:
        """No 5xx; a 4xx says what was wrong."""
        self.summary.statuses[answer.status] += 1
        if answer.status >= 500:
            raise _Failed(detail, f"HTTP {answer.status}: {answer.body[:300]!r}")
        if answer.status < 400 and answer.status != 202:
            return
        try:
            body = answer.json()
        except ValueError:
            raise _Failed(detail, f"HTTP {answer.status} with a body that is not JSON: {answer.body[:200]!r}") from None
        if stow and isinstance(body, dict) and _DICOM_JSON_FAILED in body:
            for item in body[_DICOM_JSON_FAILED].get("Value", []):
                if "00081197" not in item:
                    raise _Failed(detail, f"a failed instance without FailureReason: {item}")
            return
        if answer.status == 202 or not isinstance(body, dict) or not str(body.get("message", "")).strip():
            raise _Failed(detail, f"HTTP {answer.status} without an explanation: {answer.body[:200]!r}")

    def _found(self, sop: str) -> bool:
        r = self.http.get(f"{self.base}/instances", params={"SOPInstanceUID": sop}, timeout=self.timeout)
        if r.status_code != 200:
            raise _Failed("", f"QIDO of SOP Instance {sop}: HTTP {r.status_code}")
        return bool(r.json())

    def _study_empty(self, study: str) -> bool:
        r = self.http.get(f"{self.base}/studies/{study}/instances", timeout=self.timeout)
        return r.status_code == 404 or (r.status_code == 200 and not r.json())

    def _stow_outcome(self, answer: Answer, detail: str, study: str, good: list[str]) -> None:
        """The store agrees with the answer: acknowledged instances are there, failed ones
        are not, a request refused as a whole stored nothing, good ones were stored."""
        self._explains(answer, detail, stow=True)
        body = answer.json() if answer.body[:1] == b"{" else {}
        if not isinstance(body, dict):
            body = {}
        stored = [i["00081155"]["Value"][0] for i in body.get(_DICOM_JSON_STORED, {}).get("Value", [])]
        failed = [i["00081155"]["Value"][0] for i in body.get(_DICOM_JSON_FAILED, {}).get("Value", [])
                  if "00081155" in i and i["00081155"].get("Value")]
        for sop in stored:
            if not self._found(sop):
                raise _Failed(detail, f"SOP Instance {sop} acknowledged but not found")
        for sop in failed:
            if sop not in stored and self._found(sop):
                raise _Failed(detail, f"SOP Instance {sop} reported failed but stored")
        if answer.status >= 400 and not stored:
            if not self._study_empty(study):
                raise _Failed(detail, f"HTTP {answer.status} refused the request but study {study} has instances")
        for sop in good:
            if answer.status in (200, 202) and sop not in stored:
                raise _Failed(detail, f"the good instance {sop} beside the malformed one was not stored")

    # --- HTTP cases ----------------------------------------------------------------------------
    def _mutated(self, rng: random.Random, study: str) -> tuple[bytes, str]:
        name, data = rng.choice(self.sources)
        data, _ = mutations.renamed(data, study)
        data, names = mutations.mutate(rng, data)
        return data, f"{name} {'+'.join(names)}"

    def _good(self, study: str) -> tuple[bytes, str]:
        return mutations.renamed(self.sources[0][1], study)

    def _stow_file(self, rng: random.Random) -> str:
        """The malformed file beside a good one in one request: the good one is stored."""
        study = generate_uid()
        bad, detail = self._mutated(rng, study)
        good, good_sop = self._good(study)
        boundary = uuid.uuid4().hex
        parts = [bad, good] if rng.random() < 0.5 else [good, bad]
        r = self.http.post(f"{self.base}/studies", data=mutations.multipart(parts, boundary), timeout=self.timeout,
                           headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        answer = self._answer(r)
        if answer.status not in (200, 202):
            self._explains(answer, detail, stow=True)
            raise _Failed(detail, f"HTTP {answer.status} for a request holding a good instance")
        self._stow_outcome(answer, detail, study, [good_sop])
        return detail

    def _stow_single(self, rng: random.Random) -> str:
        study = generate_uid()
        bad, detail = self._mutated(rng, study)
        r = self.http.post(f"{self.base}/studies", data=bad, timeout=self.timeout,
                           headers={"Content-Type": "application/dicom"})
        self._stow_outcome(self._answer(r), detail, study, [])
        return detail

    def _multipart(self, rng: random.Random) -> str:
        study = generate_uid()
        boundary = uuid.uuid4().hex
        body, kind = mutations.break_multipart(rng, mutations.multipart([self._good(study)[0], self._good(study)[0]],
                                                                          boundary), boundary)
        r = self.http.post(f"{self.base}/studies", data=body, timeout=self.timeout,
                           headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        self._stow_outcome(self._answer(r), kind, study, [])
        return kind

    def _chunked(self, rng: random.Random) -> str:
        study = generate_uid()
        boundary = uuid.uuid4().hex
        body, kind = mutations.chunked(rng, mutations.multipart([self._good(study)[0]], boundary))
        head = self._head("POST", "/studies", {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Transfer-Encoding": "chunked"})
        self._stow_outcome(self._raw(head + body), kind, study, [])
        return kind

    def _qido(self, rng: random.Random) -> str:
        target = mutations.qido_target(rng, generate_uid())
        r = self.http.get(self.base + target, timeout=self.timeout, headers={"Accept": "application/dicom+json"})
        self._explains(self._answer(r), target[:200])
        return target[:200]

    def _qido_raw(self, rng: random.Random) -> str:
        line = mutations.raw_request_line(rng).replace(b"GET /dicom-web", b"GET " + self.path.encode())
        head = self._head("GET", "/x", {"Accept": "application/dicom+json"})
        request = line + head.split(b"\r\n", 1)[1]
        self._explains(self._raw(request), repr(line))
        return repr(line)

    def _wado(self, rng: random.Random) -> str:
        study, series, sop = (generate_uid(), generate_uid(), generate_uid())
        path, headers = mutations.wado_target(rng, study, series, sop)
        r = self.http.get(self.base + path, headers=headers, timeout=self.timeout, stream=True)
        try:
            answer = Answer(r.status_code, dict(r.headers), r.raw.read(64 * 1024) if r.status_code < 400 else r.content)
        finally:
            r.close()
        self._explains(answer, f"{path} Accept: {headers['Accept']}")
        return path

    # --- DIMSE --------------------------------------------------------------------------------
    def _contexts(self):
        import pydicom
        from pynetdicom.presentation import build_context

        pairs = set()
        for _, data in self.sources:
            meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
            pairs.add((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID))
        return [build_context(sop, ts) for sop, ts in sorted(pairs)]

    def _open(self):
        ae = self.dimse.new_ae()
        for cx in self._contexts():
            ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
        assoc = ae.associate(self.dimse.host, self.dimse.port, ae_title=self.dimse.ae_title)
        if not assoc.is_established:
            ae.shutdown()
            raise RuntimeError(f"association to {self.dimse.describe()} refused")
        self._ae = ae
        return assoc

    def _release(self, assoc) -> None:
        if assoc.is_established:
            assoc.release()
        self._ae.shutdown()

    def _dimse_case(self, case: int, rng: random.Random, assoc):
        from pynetdicom import _config

        self.summary.cases += 1
        self.summary.kinds["c-store"] += 1
        study = generate_uid()
        bad, detail = self._mutated(rng, study)
        good, good_sop = self._good(study)
        saved = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, undecoded
        try:
            assoc = assoc if assoc is not None and assoc.is_established else self._open()
            with tempfile.TemporaryDirectory() as folder:
                bad_path, good_path = Path(folder, "bad.dcm"), Path(folder, "good.dcm")
                bad_path.write_bytes(bad)
                good_path.write_bytes(good)
                try:
                    status = assoc.send_c_store(bad_path)
                except (AttributeError, ValueError, KeyError, OSError, EOFError) as exc:
                    self.summary.statuses[f"c-store unsendable ({type(exc).__name__})"] += 1
                    return assoc  # the file meta itself is broken: no client sends it
                except Exception as exc:  # pydicom's readers raise many types on broken file meta
                    self.summary.statuses[f"c-store unsendable ({type(exc).__name__})"] += 1
                    return assoc
                problem = None
                if not assoc.is_established:
                    problem = "the association was aborted"
                elif "Status" not in status:
                    problem = "no C-STORE response"
                else:
                    self.summary.statuses[f"c-store 0x{status.Status:04X}"] += 1
                    if assoc.send_c_store(good_path).get("Status") != 0x0000:
                        problem = "the good instance sent after it on the same association was not stored"
                    elif not self._found(good_sop):
                        problem = f"the good instance {good_sop} was acknowledged but is not found"
                if problem:
                    self.summary.findings.append(Finding(self.seed, case, "c-store", detail, problem))
                    self._release(assoc)
                    return None
        except _Failed as exc:
            self.summary.findings.append(Finding(self.seed, case, "c-store", detail, exc.args[1]))
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = saved
        return assoc

    def _echo(self, case: int) -> None:
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = self.dimse.new_ae()
        ae.add_requested_context(Verification)
        assoc = ae.associate(self.dimse.host, self.dimse.port, ae_title=self.dimse.ae_title)
        try:
            ok = assoc.is_established and assoc.send_c_echo().get("Status") == 0x0000
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
        if not ok:
            self.summary.findings.append(Finding(self.seed, case, "c-echo", "after the run",
                                                 "the listener does not answer C-ECHO"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dicomweb", required=True, help="base URL of the DICOMweb service")
    p.add_argument("--token", help="bearer token sent with every request")
    p.add_argument("--dimse", help="AET@HOST:PORT of a storage SCP to send the same files to by C-STORE")
    p.add_argument("--calling-aet", default="CONFSUITE")
    p.add_argument("--seed", default=str(random.SystemRandom().randrange(1 << 32)))
    p.add_argument("--cases", type=int, help="number of cases (default: until --seconds)")
    p.add_argument("--seconds", type=float, default=600, help="time budget when --cases is not given")
    p.add_argument("--case", type=int, help="replay this one case of the seed")
    args = p.parse_args(argv)
    dimse = None
    if args.dimse:
        aet, host, port = parse_ae_address(args.dimse)
        dimse = DimseTarget(aet, host, port, calling_aet=args.calling_aet)
    fuzzer = Fuzzer(args.dicomweb, token=args.token, dimse=dimse, seed=args.seed)
    print(f"seed {args.seed}", flush=True)
    if args.case is not None:
        summary = fuzzer.run(cases=1, first=args.case)
    else:
        summary = fuzzer.run(cases=args.cases, seconds=None if args.cases else args.seconds)
    print(summary.text())
    return 1 if summary.findings else 0


if __name__ == "__main__":
    sys.exit(main())
