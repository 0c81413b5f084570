"""Accept-header negotiation for WADO-RS (PS3.18 8.7): which representation to send.

Lenient by design (strict Accept parsing is a top complaint about DICOMweb servers): quoted or unquoted
parameters, several media ranges, duplicated ``transfer-syntax`` parameters,
``multipart/*`` and ``*/*`` are all understood; 406 only when nothing fits.
"""
from __future__ import annotations

from dataclasses import dataclass

from flask import request

from dicomweb.media_types import MediaRange, parse_accept
from gateway.errors import NotAcceptable

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
# What we can produce from any stored syntax by decoding.
PRODUCIBLE = (EXPLICIT_LE, IMPLICIT_LE)


@dataclass(frozen=True)
class Choice:
    multipart: bool
    part_type: str  # media type of each part (or of the single body)
    transfer_syntax: str | None  # None: as stored


def _accept() -> list[MediaRange]:
    return parse_accept(request.headers.get("Accept"))


def _not_acceptable(what: str) -> NotAcceptable:
    return NotAcceptable(
        f"none of Accept: {request.headers.get('Accept')!r} can be produced for {what}")


def _syntax_for(ranges_ts: tuple[str, ...], stored: set[str]) -> str | None | bool:
    """The transfer syntax to send (None = as stored), or False when none fits every instance."""
    if not ranges_ts:
        return EXPLICIT_LE
    for ts in ranges_ts:
        if ts == "*":
            return None
        if ts in PRODUCIBLE or stored == {ts}:
            return ts
    return False


def choose_dicom(stored_syntaxes: set[str], *, single_allowed: bool) -> Choice:
    """Instances: multipart/related; type=application/dicom (or a single application/dicom body)."""
    for r in _accept():
        related = r.related_type or "application/dicom"
        if r.media_type in ("multipart/related", "multipart/*") and related in (
                "application/dicom", "application/*", "*/*"):
            ts = _syntax_for(r.transfer_syntaxes, stored_syntaxes)
            if ts is not False:
                return Choice(True, "application/dicom", ts)
        elif r.media_type == "application/dicom" and single_allowed:
            ts = _syntax_for(r.transfer_syntaxes, stored_syntaxes)
            if ts is not False:
                return Choice(False, "application/dicom", ts)
        elif r.media_type == "*/*":
            return Choice(True, "application/dicom", EXPLICIT_LE)
    raise _not_acceptable("DICOM instances (multipart/related; type=\"application/dicom\")")


def choose_frames(stored_syntax: str, stored_media_type: str, *, single_allowed: bool) -> Choice:
    """Frames and pixel bulk data: octet-stream (uncompressed or as stored) or the image media type."""
    for r in _accept():
        if r.media_type in ("multipart/related", "multipart/*"):
            related = r.related_type or "application/octet-stream"
            if related in ("application/octet-stream", "*/*", "application/*"):
                ts = _syntax_for(r.transfer_syntaxes, {stored_syntax})
                if ts is not False and ts != IMPLICIT_LE:
                    return Choice(True, "application/octet-stream", ts)
            elif stored_media_type != "application/octet-stream" and MediaRange(related).matches(stored_media_type):
                if not r.transfer_syntaxes or "*" in r.transfer_syntaxes or stored_syntax in r.transfer_syntaxes:
                    return Choice(True, stored_media_type, None)
        elif r.media_type == "application/octet-stream" and single_allowed:
            ts = _syntax_for(r.transfer_syntaxes, {stored_syntax})
            if ts is not False and ts != IMPLICIT_LE:
                return Choice(False, "application/octet-stream", ts)
        elif r.media_type == "*/*":
            return Choice(True, "application/octet-stream", EXPLICIT_LE)
    raise _not_acceptable(f"frames stored as {stored_syntax}")


def choose_rendered() -> str:
    for r in _accept():
        for media_type in ("image/jpeg", "image/png", "image/gif"):
            if r.matches(media_type):
                return media_type
    raise _not_acceptable("a rendered image (image/jpeg, image/png, image/gif)")
