"""The app factory: the WSGI app of the HTTP front doors (DICOMweb, the fast API) on the core
services that :meth:`gateway.services.Services.build` makes; request context (request id,
CORS, access log), authentication of every request, and the one JSON error shape."""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Mapping

from flask import Flask, g, jsonify, request, send_from_directory
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

import dicomweb
import proprietary
from auth.audit import audit_context
from auth.credentials import (
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    RequestAuthenticator,
    create_provider,
    redact,
)
from gateway import __version__, health, metrics
from gateway.config import Settings, SettingsError, load_settings
from gateway.errors import GatewayError, NotAuthenticated
from gateway.logs import configure_logging, request_id_var
from gateway.proxies import TrustedProxies
from gateway.services import Services
from gateway.web import error_body

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("gateway.access")

CORS_ALLOW_HEADERS = "accept, authorization, content-type, x-request-id"
CORS_EXPOSE_HEADERS = ("Warning, Content-Location, Location, X-Request-ID, Retry-After, WWW-Authenticate, "
                       "Content-Disposition, Content-Range, Accept-Ranges, ETag")
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"
DOCS_ASSETS = "/api/docs/assets/"


PROBES = ("/healthz", "/readyz", "/readyz/dimse")


def door_of(path: str) -> str:
    """The front door of an HTTP request, as the audit log and the access line name it."""
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/dicom-web"):
        return "dicomweb"
    return "probe" if path in PROBES else "other"


def www_authenticate(exc: NotAuthenticated) -> str:
    """RFC 6750 challenge: the error code only when credentials were sent."""
    value = 'Bearer realm="dental-pacs-gateway"'
    if exc.error:
        description = exc.message.replace("\\", "").replace('"', "'")[:200]
        value += f', error="{exc.error}", error_description="{description}"'
    return value


def create_app(settings: Settings | Mapping[str, Any] | None = None, *, services: Services | None = None) -> Flask:
    if not isinstance(settings, Settings):
        settings = load_settings(overrides=settings)
    configure_logging(settings["log.level"], settings["log.format"])

    app = Flask("gateway")
    app.config.update(
        API_TITLE="Dental PACS gateway",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=DOCS_ASSETS,  # served from the swagger-ui-bundle wheel: no CDN
        OPENAPI_SWAGGER_UI_CONFIG={"persistAuthorization": True},
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "a token of the configured provider, e.g. from `gateway token`"}}},
            "security": [{"bearer": []}],
        },
        MAX_CONTENT_LENGTH=None,
    )
    app.config["GATEWAY_SETTINGS"] = settings
    if services is None:
        services = Services.build(settings)
    app.extensions["gateway"] = services

    app.wsgi_app = TrustedProxies(app.wsgi_app, settings["server.trusted_proxies"])
    api = Api(app)
    _install_api_docs(app)
    _install_request_context(app, settings)
    _install_error_handlers(app)
    _install_authentication(app, services)  # every request but the probes and the API docs
    api.register_blueprint(health.blp)
    proprietary.init_app(app, api)
    dicomweb.init_app(app, api)
    return app


def _install_api_docs(app: Flask) -> None:
    """Swagger UI's files, from the ``swagger-ui-bundle`` wheel: the docs page works where no
    CDN is reachable (a hospital network)."""
    from swagger_ui_bundle import swagger_ui_path

    @app.route(DOCS_ASSETS + "<path:name>")
    def _api_docs_asset(name: str):
        return send_from_directory(str(swagger_ui_path), name, max_age=86400)

    @app.route("/favicon.ico")  # what a browser asks for beside the docs page
    def _favicon():
        return send_from_directory(str(swagger_ui_path), "favicon-32x32.png", max_age=86400)


def _install_authentication(app: Flask, services: Services) -> None:
    try:
        provider = create_provider(services.settings)
    except LookupError as exc:
        raise SettingsError(str(exc)) from exc
    except SettingsError:
        raise
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    authenticator = RequestAuthenticator(provider, services.shares, services.signer, services.audit)

    @app.before_request
    def _authenticate():
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return None
        g.audit_context = audit_context(client=request.remote_addr, door=door_of(request.path))
        g.audit_context.__enter__()
        g.principal = authenticator.authenticate(request)
        return None

    @app.teardown_request
    def _leave(_exc=None):
        context = g.pop("audit_context", None)
        if context is not None:
            try:
                context.__exit__(None, None, None)
            except ValueError:  # the request ran in another context (streamed responses)
                pass


def _install_request_context(app: Flask, settings: Settings) -> None:
    origins = settings["dicomweb.cors_origins"]

    @app.before_request
    def _start() -> Any:
        rid = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        g.request_id = rid
        g.started = time.perf_counter()
        request_id_var.set(rid)
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return app.response_class(status=204)
        return None

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        origin = request.headers.get("Origin")
        if origins and origin:
            allowed = "*" in origins or origin in origins
            if allowed:
                response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
                if "*" not in origins:
                    response.headers.add("Vary", "Origin")
                response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
                if request.method == "OPTIONS":
                    requested = request.headers.get("Access-Control-Request-Headers")
                    response.headers["Access-Control-Allow-Headers"] = requested or CORS_ALLOW_HEADERS
                    response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
                    response.headers["Access-Control-Max-Age"] = "600"
        started = g.get("started")
        if started is not None:
            _log_access(response, started)
        return response


class _Counted:
    """A streamed response body, counted as it is sent; ``done`` runs once it is over."""

    def __init__(self, body, done):
        self.body, self.done, self.count = body, done, 0

    def __iter__(self):
        for chunk in self.body:
            self.count += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            self.done(self.count)


def _log_access(response, started: float) -> None:
    """The access line: when the last byte is sent (a streamed response is measured to its
    end), with the time to the first byte (the headers, ready)."""
    fields = {
        "request_id": g.get("request_id", "-"), "method": request.method,
        "route": request.url_rule.rule if request.url_rule is not None else None,
        "status": response.status_code, "door": door_of(request.path), "bytes_in": request.content_length,
        "ttfb_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    logged = access_logger.isEnabledFor(logging.INFO)  # the rest is for the line only (not at log.level warning)
    if logged:
        who = g.get("principal")
        fields.update({"path": redact(request.full_path.rstrip("?")),
                       "principal": who.user_id if who else None, "clinic": who.clinic_id if who else None,
                       "client": request.remote_addr})

    def done(sent: int) -> None:
        fields["bytes"] = sent
        fields["total_ms"] = round((time.perf_counter() - started) * 1000, 1)
        if logged:
            access_logger.info("%s %s -> %s, %d B in %.1f ms (first byte %.1f ms)", fields["method"], fields["path"],
                               fields["status"], sent, fields["total_ms"], fields["ttfb_ms"], extra={"access": fields})
        metrics.observe_request(fields)

    if response.is_streamed:
        response.response = _Counted(response.response, done)
    else:
        done(response.content_length or 0)


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError):
        response = jsonify(error_body(exc.http_status, exc.message, **exc.details))
        response.status_code = exc.http_status
        if exc.http_status == 503:
            response.headers["Retry-After"] = "5"
        if isinstance(exc, NotAuthenticated):
            response.headers["WWW-Authenticate"] = www_authenticate(exc)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = exc.description or exc.name
        data = getattr(exc, "data", None)  # flask-smorest / webargs validation details
        errors = data.get("messages") if isinstance(data, dict) else None
        if errors:
            message = "invalid request: " + "; ".join(_field_errors(errors))
        response = jsonify(error_body(exc.code or 500, message, **({"fields": errors} if errors else {})))
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error")
        response = jsonify(error_body(500, f"internal error; quote request id {g.get('request_id', '-')}"))
        response.status_code = 500
        return response


_LOCATIONS = ("json", "query", "form", "headers")


def _field_errors(messages, path: str = "") -> list[str]:
    """webargs' nested ``{location: {field: [message]}}`` as ``field: message`` lines."""
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            inner = "" if not path and key in _LOCATIONS else f"{path}.{key}" if path else str(key)
            lines.extend(_field_errors(value, inner))
        return lines
    if isinstance(messages, (list, tuple)):
        return [line for message in messages for line in _field_errors(message, path)]
    return [f"{path}: {messages}" if path else str(messages)]
