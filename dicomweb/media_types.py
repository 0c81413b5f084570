"""Lenient parsing of Content-Type and Accept headers for DICOMweb (PS3.18 8.7).

Real clients are sloppy: OHIF, dicomweb-client, dcmjs, browsers, curl and
Java's HttpURLConnection all send slightly different spellings (quoted or
unquoted parameter values, duplicated ``transfer-syntax`` parameters, a bare
``*`` instead of ``*/*``, trailing ``;``).  Everything here accepts those and
normalises to lower-cased media types.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["MediaRange", "parse_accept", "parse_media_type"]

# RFC 7230 "tchar": the characters allowed in a type or subtype token.
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def _split_unquoted(value: str, sep: str) -> list[str]:
    """Split ``value`` on ``sep`` wherever it is not inside a double-quoted string.

    Backslash escapes inside quotes are honoured; an unterminated quote runs to
    the end of the string (lenient rather than an error).
    """
    pieces: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    for ch in value:
        if in_quotes:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
            current.append(ch)
        elif ch == sep:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        inner = value[1:-1] if len(value) >= 2 and value.endswith('"') else value[1:]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def _parse(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Parse a media type into its lower-cased type and an ordered parameter list.

    Raises ValueError if the type/subtype part is unusable.
    """
    pieces = _split_unquoted(value, ";")
    head = pieces[0].strip().lower()
    if head == "*":
        # Java's HttpURLConnection default Accept header contains "*; q=.2".
        head = "*/*"
    main, slash, sub = head.partition("/")
    main, sub = main.strip(), sub.strip()
    if not slash or not _TOKEN.match(main) or not _TOKEN.match(sub):
        raise ValueError(f"invalid media type {value.strip()!r}")
    if main == "*" and sub != "*":
        raise ValueError(f"invalid media type {value.strip()!r}: '*/{sub}' is not a valid range")

    params: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        name, eq, raw = piece.partition("=")
        name = name.strip().lower()
        if not name or not eq:
            # Empty piece (trailing ';') or a bare word: nothing usable.
            continue
        params.append((name, _unquote(raw)))
    return f"{main}/{sub}", params


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Parse a Content-Type-like value into ``("type/subtype", {param: value})``.

    The media type and parameter names are lower-cased, values are unquoted
    (their case is kept: boundaries are case-sensitive).  When a parameter is
    repeated, the first occurrence wins.  Raises ValueError if the value has
    no usable ``type/subtype``.
    """
    media_type, param_list = _parse(value)
    params: dict[str, str] = {}
    for name, val in param_list:
        params.setdefault(name, val)
    return media_type, params


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header.

    ``params`` excludes ``q``; it keeps the first value of a repeated
    parameter, while ``transfer_syntaxes`` keeps every ``transfer-syntax``
    value in order (OHIF repeats that parameter).  ``related_type`` is the
    lower-cased ``type`` parameter of a multipart range, else None.
    """

    media_type: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    q: float = 1.0
    transfer_syntaxes: tuple[str, ...] = ()
    related_type: str | None = None

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts the concrete ``media_type`` (parameters ignored)."""
        concrete = media_type.split(";", 1)[0].strip().lower()
        if self.media_type == "*/*":
            return True
        main, _, sub = self.media_type.partition("/")
        if sub == "*":
            return concrete.partition("/")[0] == main
        return concrete == self.media_type

    @classmethod
    def parse(cls, value: str) -> MediaRange:
        """Parse one Accept element; raises ValueError on garbage (including a bad q)."""
        media_type, param_list = _parse(value)
        q = 1.0
        params: dict[str, str] = {}
        transfer_syntaxes: list[str] = []
        for name, val in param_list:
            if name == "q":
                try:
                    q = float(val)
                except ValueError:
                    raise ValueError(f"invalid q value {val!r} in {value.strip()!r}") from None
                if not math.isfinite(q) or q < 0:
                    raise ValueError(f"invalid q value {val!r} in {value.strip()!r}")
                q = min(q, 1.0)
                continue
            if name == "transfer-syntax":
                transfer_syntaxes.append(val)
            params.setdefault(name, val)
        related = params.get("type")
        return cls(
            media_type=media_type,
            params=params,
            q=q,
            transfer_syntaxes=tuple(transfer_syntaxes),
            related_type=related.lower() if related is not None and media_type.startswith("multipart/") else None,
        )


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, best (highest q) first.

    A missing or blank header means ``*/*``.  Unparsable elements are skipped
    and ranges with ``q=0`` dropped; if nothing usable remains the result is
    an empty list so the caller can answer 406 (or 400).  Never raises.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for piece in _split_unquoted(header, ","):
        if not piece.strip():
            continue
        try:
            rng = MediaRange.parse(piece)
        except ValueError as exc:
            logger.debug("ignoring Accept element: %s", exc)
            continue
        if rng.q > 0:
            ranges.append(rng)
    ranges.sort(key=lambda r: -r.q)  # list.sort is stable: header order kept for ties
    return ranges
