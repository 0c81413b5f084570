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
