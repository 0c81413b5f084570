"""The one error hierarchy of the gateway core.

Each error carries the HTTP status and the DICOM status (PS3.4 Annex B/C, PS3.7
Annex C) a front door answers with, so that mapping happens in one place per
door and never falls through to a generic 500 or 0xC211 when the cause is known.
"""
from __future__ import annotations


class GatewayError(Exception):
    http_status = 500
    # 0x0110 Processing failure: used as STOW FailureReason and as DIMSE status.
    dimse_status = 0x0110
    failure_reason = 0x0110

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(GatewayError):
    http_status = 400
    dimse_status = 0xC000
    failure_reason = 0xC000


class MissingAttribute(BadRequest):
    """A required attribute (UID, SOP class) is absent or invalid."""

    dimse_status = 0xC000
    failure_reason = 0xC000


class InvalidDicom(BadRequest):
    """The bytes are not a DICOM Part 10 file (or a truncated one)."""

    dimse_status = 0xC000
    failure_reason = 0xC000


class DatasetMismatch(BadRequest):
    """The dataset does not match its SOP class or the request's study."""

    dimse_status = 0xA900
    failure_reason = 0xA900


class StudyMismatch(DatasetMismatch):
    # Microsoft and dcm4chee use 43265 (0xA901) / 0xC409 for this; PS3.18 leaves it open.
    failure_reason = 0xA901


class NotFound(GatewayError):
    http_status = 404
    dimse_status = 0xC000
    failure_reason = 0xC000


class NotAuthenticated(GatewayError):
    """No credentials, or credentials that cannot be verified (bad signature, expired, wrong
    issuer or audience, unknown key). Answered 401 with ``WWW-Authenticate: Bearer``; ``error``
    is the RFC 6750 error code (``invalid_token``, ``invalid_request``; None when no
    credentials were sent)."""

    http_status = 401
    dimse_status = 0x0124
    failure_reason = 0x0124

    def __init__(self, message: str, *, error: str | None = "invalid_token", **details):
        super().__init__(message, **details)
        self.error = error


class NotAuthorized(GatewayError):
    http_status = 403
    dimse_status = 0x0124
    failure_reason = 0x0124


class InstanceExists(GatewayError):
    """Same SOP Instance UID already stored with different bytes (duplicate policy: reject)."""

    http_status = 409
    dimse_status = 0x0111  # Duplicate SOP Instance
    failure_reason = 0x0111


class NotAcceptable(GatewayError):
    http_status = 406


class UnsupportedMediaType(GatewayError):
    http_status = 415


class PayloadTooLarge(GatewayError):
    http_status = 413
    dimse_status = 0xA700
    failure_reason = 0xA700


class BackendUnavailable(GatewayError):
    """A store could not be reached or failed; the request may be retried."""

    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0xA700


class Conflict(GatewayError):
    """The request contradicts what is stored (a project name taken)."""

    http_status = 409


class PreconditionFailed(GatewayError):
    """A conditional write made against another version than the stored one (``If-Match``), or
    a create (``If-None-Match: *``) of something that exists; ``current`` is what is stored."""

    http_status = 412

    def __init__(self, message: str, *, current=None, **details):
        super().__init__(message, **details)
        self.current = current


class PreconditionRequired(GatewayError):
    """A write without the precondition that keeps it from overwriting another's (RFC 6585)."""

    http_status = 428
