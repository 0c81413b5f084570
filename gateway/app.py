"""The app factory: the one place that picks backends from settings and wires the front doors."""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Mapping

from flask import Flask, g, jsonify, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.errors import GatewayError, NotAuthenticated
from gateway.logs import configure_logging, request_id_var
from gateway.services import Services
from plugins.manager import create_plugin_manager

logger = logging.getLogger(__name__)

CORS_ALLOW_HEADERS = "accept, authorization, content-type, x-request-id"
CORS_EXPOSE_HEADERS = "Warning, Content-Location, Location, X-Request-ID, Retry-After, WWW-Authenticate"
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"


def error_body(status: int, message: str, **errors: Any) -> dict[str, Any]:
    """The JSON error shape of every front door (flask-smorest's)."""
    from http import HTTPStatus

    body: dict[str, Any] = {"code": status, "status": HTTPStatus(status).phrase, "message": message}
    if errors:
        body["errors"] = errors
    return body


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
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=None,
        JSON_SORT_KEYS=False,
    )
    app.config["GATEWAY_SETTINGS"] = settings
    if services is None:
        services = Services.build(settings, create_plugin_manager())
    app.extensions["gateway"] = services

    api = Api(app)
    _install_request_context(app, settings)
    _install_error_handlers(app)

    from auth.web import init_app as init_auth
    from dicomweb import init_app as init_dicomweb
    from gateway import admin, health

    init_auth(app, api)  # every request but the probes and the API docs is authenticated
    api.register_blueprint(health.blp)
    admin.init_app(app, api)
    init_dicomweb(app, api)
    return app


def services_of(app: Flask | None = None) -> Services:
    from flask import current_app

    return (app or current_app).extensions["gateway"]


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
            from auth.web import redact

            logger.info("%s %s -> %s in %.1f ms", request.method, redact(request.full_path.rstrip("?")),
                        response.status_code, (time.perf_counter() - started) * 1000)
        return response


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
        response = jsonify(error_body(exc.code or 500, message, **({"fields": errors} if errors else {})))
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error")
        response = jsonify(error_body(500, f"internal error; quote request id {g.get('request_id', '-')}"))
        response.status_code = 500
        return response
