import io
import itertools
import random
import re
import tracemalloc
import zlib

import pytest

from dicomweb.multipart import (
    MalformedMultipart,
    MultipartReader,
    iter_multipart,
    new_boundary,
    parse_boundary,
)
from tests.helpers import iter_multipart_body

BOUNDARY = "xyz-Boundary_42"


class TrickleStream:
    """A stream whose read(n) returns between 1 and max(n, ...) bytes, like chunked WSGI input."""

    def __init__(self, data: bytes, sizes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes  # callable returning the next read size

    def read(self, n: int) -> bytes:
        size = min(n, self._sizes())
        out = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(out)
        return out


def tiny_reads(data: bytes, seed: int = 0) -> TrickleStream:
    rng = random.Random(seed)
    return TrickleStream(data, lambda: rng.randint(1, 7))


def random_reads(data: bytes, seed: int = 0, max_size: int = 70_000) -> TrickleStream:
    rng = random.Random(seed)
    return TrickleStream(data, lambda: rng.randint(1, max_size))


def build(parts, boundary: str = BOUNDARY) -> bytes:
    return b"".join(iter_multipart(parts, boundary))


def read_all(stream, boundary: str = BOUNDARY, **kwargs) -> list[tuple[dict, bytes]]:
    return [(part.headers, b"".join(part)) for part in MultipartReader(stream, boundary, **kwargs)]


def bodies(stream, boundary: str = BOUNDARY, **kwargs) -> list[bytes]:
    return [body for _, body in read_all(stream, boundary, **kwargs)]


# -- writer -------------------------------------------------------------------


def test_writer_exact_encoding():
    out = build([({"Content-Type": "application/dicom"}, b"abc"), ({}, [b"d", b"", b"ef"])], "b")
    assert out == (
        b"--b\r\nContent-Type: application/dicom\r\n\r\nabc" b"\r\n--b\r\n\r\ndef" b"\r\n--b--\r\n"
    )


def test_writer_no_parts():
    assert build([], "b") == b"--b--\r\n"


def test_writer_is_lazy():
    pulled = []

    def body():
        for i in range(3):
            pulled.append(i)
            yield b"x" * 10

    def parts():
        pulled.append("part")
        yield {"Content-Type": "application/octet-stream"}, body()

    out = iter_multipart(parts(), "b")
    assert pulled == []
    assert next(out).startswith(b"--b\r\n")
    assert pulled == ["part"]
    assert next(out) == b"x" * 10
    assert pulled == ["part", 0]


@pytest.mark.parametrize("headers", [{"X": "a\r\nInjected: 1"}, {"Bad\nName": "v"}, {"": "v"}])
def test_writer_rejects_header_injection(headers):
    with pytest.raises(ValueError):
        build([(headers, b"")])


def test_writer_rejects_str_body():
    with pytest.raises(TypeError):
        build([({}, "text")])


def test_new_boundary_is_random_and_token_safe():
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert re.fullmatch(r"[A-Za-z0-9-]{1,70}", boundary)
        assert parse_boundary(f"multipart/related; type=application/dicom; boundary={boundary}") == boundary


# -- parse_boundary -----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary="abc def:1"', "abc def:1"),
        ("multipart/related; type=application/dicom; boundary=AbC123", "AbC123"),
        ("Multipart/Related;Boundary=x;type=application/dicom", "x"),
        ('multipart/form-data; boundary="a;b"', "a;b"),
    ],
)
def test_parse_boundary(header, expected):
    assert parse_boundary(header) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("multipart/related; type=application/dicom", "no boundary"),
        ('multipart/related; boundary=""', "no boundary"),
        ("application/dicom; boundary=abc", "expected a multipart"),
        ("", "invalid Content-Type"),
        ("multipart/related; boundary=" + "a" * 300, "longer than"),
    ],
)
def test_parse_boundary_errors(header, message):
    with pytest.raises(MalformedMultipart, match=message):
        parse_boundary(header)


# -- reader: normal operation -------------------------------------------------


def test_round_trip_with_writer():
    parts = [
        ({"Content-Type": "application/dicom", "Content-Location": "/a/b"}, b"\x00\x01" * 1000),
        ({"Content-Type": "application/dicom+json"}, b'{"x": 1}'),
        ({}, b""),
    ]
    got = read_all(io.BytesIO(build(parts)))
    assert got == [
        ({"content-type": "application/dicom", "content-location": "/a/b"}, b"\x00\x01" * 1000),
        ({"content-type": "application/dicom+json"}, b'{"x": 1}'),
        ({}, b""),
    ]


def test_part_attributes():
    data = build([({"Content-Type": "application/dicom"}, b"a"), ({"X-Other": " v "}, b"b")])
    reader = MultipartReader(io.BytesIO(data), BOUNDARY)
    first, second = [(p.content_type, p.headers, p.index, p.read()) for p in reader]
    assert first == ("application/dicom", {"content-type": "application/dicom"}, 0, b"a")
    assert second == (None, {"x-other": "v"}, 1, b"b")


def test_many_parts():
    parts = [
        ({"Content-Type": "application/dicom", "X-Index": str(i)}, f"body {i}".encode() * (i % 7))
        for i in range(2000)
    ]
    got = read_all(io.BytesIO(build(parts)), chunk_size=4096)
    assert [body for _, body in got] == [body for _, body in parts]
    assert [headers["x-index"] for headers, _ in got] == [str(i) for i in range(2000)]


def test_body_larger_than_several_chunks_is_streamed():
    body = random.Random(1).randbytes(100_000)
    data = build([({}, body), ({}, b"tail")])
    stream = io.BytesIO(data)
    parts = iter(MultipartReader(stream, BOUNDARY, chunk_size=1024))
    part = next(parts)
    chunks = part.iter_chunks()
    first = next(chunks)
    assert 0 < len(first) <= 2 * 1024
    assert stream.tell() < 10_000  # not read ahead to the end of the part
    rest = b"".join(chunks)
    assert first + rest == body
    assert [p.read() for p in parts] == [b"tail"]


def test_delimiter_split_across_tiny_reads():
    parts = [
        ({"Content-Type": "application/dicom"}, b"first\r\n--xyz-Boundary_4 body\r\n"),
        ({"Content-Type": "text/plain"}, b"\r"),
        ({}, b""),
        ({"A": "1", "B": "2"}, b"-" * 50 + b"\r\n--" + BOUNDARY.encode() + b"--x" + b"\r\n" * 20),
    ]
    data = b"preamble\r\n" + build(parts) + b"epilogue"
    expected = [body for _, body in parts]
    for seed in range(20):
        for chunk_size in (1, 3, 64, 256 * 1024):
            assert bodies(tiny_reads(data, seed), chunk_size=chunk_size) == expected


def test_random_chunk_sizes_big_body():
    rng = random.Random(7)
    decoy = b"\r\n--" + BOUNDARY.encode()
    pieces = []
    for _ in range(200):
        pieces.append(rng.randbytes(rng.randint(0, 40_000)))
        pieces.append(decoy[: rng.randint(1, len(decoy))])
        pieces.append(rng.choice([b"X", b"--X", b" x", b"\t-", b"\r", b"\r\r\n--"]))
    big = b"".join(pieces)  # ~4 MB full of partial and false delimiters
    parts = [({"Content-Type": "application/dicom"}, big), ({}, big[::-1]), ({}, b"end")]
    data = build(parts)
    for seed in range(4):
        for chunk_size in (1000, 65536, 256 * 1024):
            assert bodies(random_reads(data, seed), chunk_size=chunk_size) == [big, big[::-1], b"end"]


@pytest.mark.parametrize(
    "body",
    [
        b"\r\n--" + BOUNDARY.encode() + b"X",
        b"\r\n--" + BOUNDARY.encode() + b"2\r\nContent-Type: x\r\n\r\n",
        b"\r\n--" + BOUNDARY.encode() + b" \tnot padding\r\n",
        b"\r\n--" + BOUNDARY.encode() + b"--not the end",
        b"\r\n--" + BOUNDARY.encode() + b"-\r\n",
        b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n",
        b"\n--" + BOUNDARY.encode() + b"\r\n",  # no CR: not a delimiter
        b"--" + BOUNDARY.encode() + b"\r\n",  # not at the start of a line
        b"ends with CR\r",
        b"ends with CRLF-\r\n-",
        b"\r\n\r\n\r\n",
    ],
)
def test_boundary_like_bytes_inside_body(body):
    data = build([({}, body), ({}, body)])
    assert bodies(io.BytesIO(data)) == [body, body]
    assert bodies(tiny_reads(data), chunk_size=5) == [body, body]


def test_preamble_and_epilogue_are_ignored():
    preamble = b"This is a preamble.\r\nMore preamble\r\n"
    epilogue = b"epilogue\r\n--" + BOUNDARY.encode() + b"\r\n\r\nlater"
    data = preamble + build([({}, b"a"), ({}, b"b")]) + epilogue
    assert bodies(io.BytesIO(data)) == [b"a", b"b"]


def test_first_boundary_without_leading_crlf_and_no_trailing_crlf():
    data = b"--b\r\n\r\nbody\r\n--b--"
    assert bodies(io.BytesIO(data), "b") == [b"body"]


def test_transport_padding_after_boundaries():
    data = b"--b \t\r\nContent-Type: a\r\n\r\none\r\n--b\t\r\n\r\ntwo\r\n--b-- \t\r\n"
    assert read_all(io.BytesIO(data), "b") == [({"content-type": "a"}, b"one"), ({}, b"two")]


def test_lf_only_line_endings_in_headers():
    data = b"--b\nContent-Type: a\nX-Y: z\n\nbody\r\n--b--\n"
    assert read_all(io.BytesIO(data), "b") == [({"content-type": "a", "x-y": "z"}, b"body")]


def test_header_parsing_details():
    data = (
        b"--b\r\nCONTENT-TYPE:application/dicom  \r\nX-Folded: one\r\n  two\r\n"
        b"X-Dup: 1\r\nx-dup: 2\r\nX-Empty:\r\n\r\nbody\r\n--b--\r\n"
    )
    ((headers, body),) = read_all(io.BytesIO(data), "b")
    assert headers == {"content-type": "application/dicom", "x-folded": "one two", "x-dup": "1, 2", "x-empty": ""}
    assert body == b"body"


def test_only_close_delimiter_gives_no_parts():
    assert bodies(io.BytesIO(b"--b--\r\n"), "b") == []


def test_empty_part_body_and_no_headers():
    assert read_all(io.BytesIO(b"--b\r\n\r\n\r\n--b\r\n\r\nx\r\n--b--"), "b") == [({}, b""), ({}, b"x")]


def test_part_skipped_without_consuming():
    big = b"z" * 50_000
    data = build([({"N": "0"}, big), ({"N": "1"}, b"keep"), ({"N": "2"}, big), ({"N": "3"}, b"last")])
    reader = MultipartReader(tiny_reads(data), BOUNDARY, chunk_size=4096)
    seen = []
    for part in reader:
        if part.headers["n"] in ("1", "3"):
            seen.append(part.read())
    assert seen == [b"keep", b"last"]


def test_part_partially_consumed_then_skipped():
    data = build([({}, b"a" * 10_000), ({}, b"second")])
    reader = MultipartReader(io.BytesIO(data), BOUNDARY, chunk_size=1000)
    it = iter(reader)
    first = next(it)
    chunks = first.iter_chunks()
    assert set(next(chunks)) == {ord("a")}
    second = next(it)
    assert second.read() == b"second"
    with pytest.raises(RuntimeError):
        next(chunks)  # the suspended iterator must not read into the next part
    with pytest.raises(RuntimeError):
        first.read()
    with pytest.raises(RuntimeError):
        second.read()  # already consumed
    assert list(it) == []


def test_reader_iterates_once():
    reader = MultipartReader(io.BytesIO(b"--b--"), "b")
    list(reader)
    with pytest.raises(RuntimeError):
        list(reader)


# -- reader: errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        b"--b\r\nContent-Type: a\r\n\r\nbody",  # mid body
        b"--b\r\nContent-Type: a\r\n\r\nbody\r\n",
        b"--b\r\nContent-Type: a\r\n\r\nbody\r\n--b",  # right after a boundary
        b"--b\r\nContent-Type: a\r\n\r\nbody\r\n--b\r\n",  # no headers of the next part
        b"--b\r\nContent-Type: a\r\n\r\nbody\r\n--b\r\nX: 1\r\n",  # mid headers
        b"--b\r\nContent-Type: a\r\n",
        b"--b\r\nContent-Type: a\r\n\r\nbody\r\n--b-",
        b"--b",
    ],
)
def test_missing_closing_boundary(cut):
    with pytest.raises(MalformedMultipart, match=re.escape("ended before the closing boundary '--b--'")):
        read_all(io.BytesIO(cut), "b")
    with pytest.raises(MalformedMultipart, match="closing boundary"):
        read_all(tiny_reads(cut), "b", chunk_size=2)


def test_truncation_is_raised_while_streaming_the_part():
    data = build([({}, b"q" * 10_000)])[:-20]
    part = next(iter(MultipartReader(io.BytesIO(data), BOUNDARY, chunk_size=1000)))
    received = []
    with pytest.raises(MalformedMultipart, match="closing boundary"):
        for chunk in part:
            received.append(chunk)
    assert received  # earlier chunks were already streamed out


def test_wrong_boundary():
    data = build([({}, b"a")], "right")
    with pytest.raises(MalformedMultipart, match="no part starts with boundary '--wrong'"):
        read_all(io.BytesIO(data), "wrong")


def test_empty_body():
    with pytest.raises(MalformedMultipart, match="no part starts with boundary"):
        read_all(io.BytesIO(b""), "b")


def test_boundary_must_start_a_line():
    assert bodies(io.BytesIO(b"preamble--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--"), "b") == [b"y"]
    with pytest.raises(MalformedMultipart, match="no part starts with boundary"):
        read_all(io.BytesIO(b"preamble--b\r\n\r\nx"), "b")


def test_huge_preamble_fails_fast():
    stream = io.BytesIO(b"x" * 5_000_000)
    with pytest.raises(MalformedMultipart, match="in the first 1000 bytes"):
        read_all(stream, "b", chunk_size=500, max_preamble_bytes=1000)
    assert stream.tell() < 10_000


def test_headers_too_large():
    data = b"--b\r\nX: " + b"v" * 20_000 + b"\r\n\r\nbody\r\n--b--"
    with pytest.raises(MalformedMultipart, match="part headers exceed 16384 bytes"):
        read_all(io.BytesIO(data), "b")
    with pytest.raises(MalformedMultipart, match="part headers exceed 100 bytes"):
        read_all(tiny_reads(data), "b", max_header_bytes=100)


def test_headers_not_terminated():
    data = b"--b\r\nX: 1\r\nbody without blank line\r\n--b--\r\n"
    with pytest.raises(MalformedMultipart, match="ended before the closing boundary"):
        read_all(io.BytesIO(data), "b")


def test_malformed_header_line():
    with pytest.raises(MalformedMultipart, match="malformed header line"):
        read_all(io.BytesIO(b"--b\r\nno colon here\r\n\r\nx\r\n--b--"), "b")


# -- memory -------------------------------------------------------------------


class LazyMultipartStream:
    """File-like object producing a ~200 MB multipart body on demand, never all at once."""

    def __init__(self, boundary: str, block: bytes, blocks: int) -> None:
        self._segments = iter_multipart_body([({"Content-Type": "application/dicom+json"}, b"{}"),
                                              ({"Content-Type": "application/dicom"}, itertools.repeat(block, blocks)),
                                              ({}, b"small")], boundary)
        self._current = memoryview(b"")

    def read(self, n: int) -> bytes:
        while not self._current:
            try:
                self._current = memoryview(next(self._segments))
            except StopIteration:
                return b""
        out = bytes(self._current[:n])
        self._current = self._current[n:]
        return out


def test_memory_stays_bounded_for_200mb_body():
    rng = random.Random(3)
    decoy = b"\r\n--" + BOUNDARY.encode()
    # 1 MiB block with false delimiters, ending in a partial delimiter that
    # the next block does not complete.
    block = rng.randbytes(300_000) + decoy + b"X" + rng.randbytes(400_000) + decoy + b"--Z" + rng.randbytes(400_000)
    block = block[: (1 << 20) - len(decoy) + 3] + decoy[:-3]
    assert len(block) == 1 << 20
    blocks = 200
    expected_crc = 0
    for _ in range(blocks):
        expected_crc = zlib.crc32(block, expected_crc)

    stream = LazyMultipartStream(BOUNDARY, block, blocks)
    tracemalloc.start()
    try:
        sizes, crc, total = [], 0, 0
        for part in MultipartReader(stream, BOUNDARY):
            if part.content_type == "application/dicom":
                for chunk in part:
                    crc = zlib.crc32(chunk, crc)
                    total += len(chunk)
                sizes.append(total)
            else:
                sizes.append(len(part.read()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sizes == [2, blocks << 20, 5]
    assert crc == expected_crc
    assert peak < 5 * 1024 * 1024, f"peak traced memory {peak} bytes"
