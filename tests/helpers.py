"""Small helpers of the tests: a free loopback port, multipart/related bodies and their parts."""
from __future__ import annotations

import io
import socket
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests

BOUNDARY = "test-boundary"

# A part is its body (sent with "Content-Type: <part_type>"), or (headers, body) with exactly
# those headers; a body is bytes or an iterable of byte chunks.
Body = bytes | Iterable[bytes]
Part = bytes | tuple[dict[str, str], Body]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iter_multipart_body(parts: Iterable[Part], boundary: str = BOUNDARY,
                        part_type: str = "application/dicom") -> Iterator[bytes]:
    """A well-formed multipart/related body, piece by piece (never joined: bodies may be huge)."""
    for part in parts:
        headers, body = part if isinstance(part, tuple) else ({"Content-Type": part_type}, part)
        yield (f"--{boundary}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
               + "\r\n").encode()
        if isinstance(body, bytes):
            yield body
        else:
            yield from body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def multipart_body(parts: Iterable[Part], boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    return b"".join(iter_multipart_body(parts, boundary, part_type))


def multipart_content_type(boundary: str = BOUNDARY, part_type: str = "application/dicom", *,
                           quote_boundary: bool = False) -> str:
    value = f'"{boundary}"' if quote_boundary else boundary
    return f'multipart/related; type="{part_type}"; boundary={value}'


def multipart_parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, body) of each part of a multipart response."""
    from dicomweb.multipart import MultipartReader, parse_boundary

    boundary = parse_boundary(response.headers["Content-Type"])
    return [(part.headers, part.read()) for part in MultipartReader(io.BytesIO(response.content), boundary)]


class CuttingProxy:
    """A TCP proxy on loopback in front of ``target_port`` that cuts its first connection(s):
    after ``upstream`` bytes from the client (a dropped upload) or ``downstream`` bytes to it (a
    dropped download), both sockets are closed. Later connections pass untouched."""

    def __init__(self, target_port: int, *, upstream: int | None = None, downstream: int | None = None,
                 cuts: int = 1):
        import socket
        import threading

        self.target_port = target_port
        self.upstream, self.downstream, self.cuts = upstream, downstream, cuts
        self.cut = 0  # connections cut so far
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                cutting = self.cut < self.cuts
                if cutting:
                    self.cut += 1
            limits = (self.upstream if cutting else None, self.downstream if cutting else None)
            for source, sink, limit in ((client, server, limits[0]), (server, client, limits[1])):
                threading.Thread(target=self._pump, args=(source, sink, limit, (client, server)), daemon=True).start()

    @staticmethod
    def _pump(source, sink, limit: int | None, both) -> None:
        import socket

        moved = 0
        try:
            while data := source.recv(64 * 1024):
                if limit is not None and moved + len(data) >= limit:
                    sink.sendall(data[:max(0, limit - moved)])
                    break
                sink.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for sock in both:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()
