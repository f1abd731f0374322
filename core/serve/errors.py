"""The serving errors, each carrying the protocol status it is answered with (HTTP code and gRPC code)."""
from __future__ import annotations

from engineroom.errors import InvalidArgument


class ServeError(Exception):
    """An error answered as the protocol's error body ``{"error": message}``."""

    http_status = 500
    grpc_code = "INTERNAL"
    reason = "internal"


class BadRequest(ServeError):
    """Malformed request, or a tensor whose name, datatype or shape the model does not accept."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    reason = "bad_request"


class NotFound(ServeError):
    """Unknown model or version."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    reason = "not_found"


class Unavailable(ServeError):
    """The model is known but not ready (loading failed or the server is stopping)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    reason = "unavailable"


class ConfigError(InvalidArgument):
    """A model repository or model configuration that cannot be served; raised at start-up."""
