"""What the bench scripts share: a free loopback port and multipart/related request bodies.

Standard library only (bench/dimse_bench.py needs nothing else), and nothing of tests/.
"""
from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def part_head(boundary: str, headers: dict[str, object]) -> bytes:
    """The delimiter line and header lines that come before a part's body (which ends in CRLF)."""
    return (f"--{boundary}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()


def close_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_body(parts: Iterable[bytes], boundary: str, part_type: str = "application/dicom") -> bytes:
    head = part_head(boundary, {"Content-Type": part_type})
    return b"".join(head + data + b"\r\n" for data in parts) + close_delimiter(boundary)


class MultipartFileBody:
    """A multipart/related body read lazily from files.

    It has a length, so requests sends Content-Length instead of chunked encoding
    (not every server accepts chunked uploads), and it is read block by block, so a
    batch never sits in client memory.
    """

    def __init__(self, paths: list[Path], boundary: str, part_type: str = "application/dicom") -> None:
        self._segments: list[bytes | Path] = []
        length = 0
        for path in paths:
            size = path.stat().st_size
            head = part_head(boundary, {"Content-Type": part_type, "Content-Length": size})
            self._segments += [head, path, b"\r\n"]
            length += len(head) + size + 2
        close = close_delimiter(boundary)
        self._segments.append(close)
        self.length = length + len(close)
        self._index = 0
        self._offset = 0
        self._file: Any = None

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        wanted = self.length if size is None or size < 0 else size
        while wanted > 0 and self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, bytes):
                piece = segment[self._offset : self._offset + wanted]
                self._offset += len(piece)
                if self._offset >= len(segment):
                    self._index, self._offset = self._index + 1, 0
            else:
                if self._file is None:
                    self._file = open(segment, "rb")
                piece = self._file.read(wanted)
                if len(piece) < wanted:
                    self._file.close()
                    self._file = None
                    self._index += 1
            out.append(piece)
            wanted -= len(piece)
        return b"".join(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
