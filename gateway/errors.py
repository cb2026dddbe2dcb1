"""One error taxonomy for the gateway; each class owns its HTTP status, OpenAI error type and
whether the fallback chain may try the next target.

    GatewayError
     ├── ClientError (never falls back: the request itself is wrong)
     │    ├── InvalidRequest        400 invalid_request_error
     │    ├── Unauthorized          401 authentication_error
     │    ├── Forbidden             403 permission_error
     │    ├── NotFound              404 invalid_request_error (unknown model / request id / path)
     │    ├── MethodNotAllowed      405
     │    └── PayloadTooLarge       413
     ├── UpstreamFailure (fallback_eligible: the next target may succeed)
     │    ├── UpstreamUnavailable   502 connection refused/reset, 5xx
     │    ├── UpstreamBadResponse   502 malformed body, broken stream
     │    ├── UpstreamRateLimited   429 (Retry-After honoured within the retry budget)
     │    ├── UpstreamTimeout       504 connect / first byte / total
     │    └── EvalGateFailed        502 an inline evaluator rejected the answer
     ├── NoHealthyTarget           503
     └── InternalError             500 (a bug; logged with its traceback, never sent)

Client-facing bodies are `{"error": {"message", "type", "param", "code"}}`. Messages never
contain upstream keys: upstream text is passed through `redact` before it is quoted.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    fallback_eligible: ClassVar[bool] = False
    #: short, low-cardinality reason used in metrics/spans (error.type)
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


class ClientError(GatewayError):
    type = "invalid_request_error"
    reason = "client_error"


class InvalidRequest(ClientError):
    status = 400
    default_code = "invalid_request"


class Unauthorized(ClientError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"
    reason = "unauthorized"


class Forbidden(ClientError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"
    reason = "forbidden"


class NotFound(ClientError):
    status = 404
    default_code = "not_found"
    reason = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status = 413
    default_code = "request_too_large"
    reason = "too_large"


class UpstreamFailure(GatewayError):
    fallback_eligible = True
    type = "upstream_error"


class UpstreamUnavailable(UpstreamFailure):
    status = 502
    default_code = "upstream_unavailable"
    reason = "upstream_unavailable"


class UpstreamBadResponse(UpstreamFailure):
    status = 502
    default_code = "bad_upstream_response"
    reason = "bad_response"


class UpstreamRateLimited(UpstreamFailure):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    reason = "rate_limited"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"
    reason = "timeout"


class EvalGateFailed(UpstreamFailure):
    status = 502
    default_code = "eval_gate_failed"
    reason = "eval_failed"


class UpstreamRejected(ClientError):
    """The upstream refused the request as invalid (4xx other than 429): its status and error
    body are passed to the caller and no fallback is tried, since every target would refuse it."""

    reason = "upstream_rejected"

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"upstream rejected the request with status {status}")
        self.upstream_status = status
        self.upstream_body = body

    def body(self) -> bytes:
        return self.upstream_body


class NoHealthyTarget(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "no_healthy_target"
    reason = "no_healthy_target"


class InternalError(GatewayError):
    pass


def upstream_status(exc: BaseException) -> int | None:
    """The HTTP status the upstream answered, when it answered (not a timeout or reset)."""
    status = getattr(exc, "upstream_status", None)
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)  # UpstreamUnavailable carries "upstream_<status>"
    if isinstance(code, str) and code.startswith("upstream_") and code[9:].isdigit():
        return int(code[9:])
    return None


def redact(text: str, secrets: list[str]) -> str:
    """Remove any upstream secret that an upstream echoed back in its error text."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return text
