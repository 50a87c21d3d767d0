"""One exception hierarchy for everything a caller can be told.

Each class maps to exactly one HTTP status and one OpenAI error ``type``; the HTTP
layer turns any :class:`GuaritaError` into ``{"error": {"message", "type", "code"}}``
in one place (``api/errors.py``).

    GuaritaError                      500 internal_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── UnsupportedOperation      400 invalid_request_error
    │   ├── PiiBlocked                400 (code pii_detected)
    │   └── InjectionDetected         400 (code prompt_injection_detected)
    ├── AuthenticationFailed          401 authentication_error
    ├── PermissionDenied              403 permission_error
    │   └── ModelNotAllowed           403 permission_error (code model_not_allowed)
    ├── NotFound                      404 not_found_error
    │   ├── ModelNotFound             404 (code model_not_found)
    │   ├── AgentNotFound             404 (code agent_not_found)
    │   ├── TaskNotFound              404 (code task_not_found)
    │   ├── FileNotFound              404 (code file_not_found)
    │   ├── BatchNotFound             404 (code batch_not_found)
    │   └── RequestNotFound           404 (code request_not_found)
    ├── Conflict                      409 invalid_request_error (code conflict)
    │   └── DeployFrozen              409 (code deploy_frozen)
    ├── PayloadTooLarge               413 invalid_request_error
    ├── RateLimited                   429 rate_limit_error (Retry-After)
    │   ├── RateLimitExceeded         429 rate_limit_error (code rate_limit_exceeded)
    │   ├── BudgetExceeded            429 insufficient_quota (code insufficient_quota)
    │   └── UpstreamRateLimited       429 rate_limit_error (upstream's Retry-After)
    ├── UpstreamError                 502 upstream_error
    │   ├── UpstreamAuthFailed        502 upstream_error (code upstream_auth)
    │   ├── UpstreamUnavailable       502 upstream_error (code upstream_unavailable)
    │   ├── UpstreamInvalidResponse   502 upstream_error (code upstream_invalid_response)
    │   ├── UpstreamTruncated         502 upstream_error (code upstream_truncated)
    │   └── QualityRejected           502 upstream_error (code quality_rejected)
    ├── ServiceUnavailable            503 service_unavailable (Retry-After)
    │   └── CircuitOpen               503 service_unavailable (code circuit_open)
    └── UpstreamTimeout               504 timeout_error
        └── DeadlineExceeded          504 timeout_error (code deadline_exceeded)

A message is written for the caller: it names the model and never an upstream's URL, a
key variable or an exception class. Such internals go in ``detail``, which is logged with
the request id and never sent.

``ConfigError`` is separate: it stops the process at start and is never sent to a caller.
"""

from __future__ import annotations

import math
from collections.abc import Collection


class ConfigError(Exception):
    """Invalid or incomplete configuration, detected at start."""


class GuaritaError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.extra_headers = headers
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after = retry_after

    def to_body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(self.retry_after)))
        return headers


class InvalidRequest(GuaritaError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedOperation(InvalidRequest):
    code = "unsupported_operation"


class PiiBlocked(InvalidRequest):
    """The agent blocks personal data and the request has some. It carries the kinds
    found, never the values, so the 400 can name them and the log line stays clean."""

    code = "pii_detected"

    def __init__(self, kinds: Collection[str], *, param: str = "messages") -> None:
        self.kinds: frozenset[str] = frozenset(kinds)
        names = ", ".join(sorted(self.kinds))
        super().__init__(
            f"The request contains personal data or credentials this agent does not accept "
            f"({names}); remove them and try again.",
            param=param,
        )


class InjectionDetected(InvalidRequest):
    """The agent blocks prompt injection and a message scored at or over its threshold."""

    code = "prompt_injection_detected"


class AuthenticationFailed(GuaritaError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GuaritaError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class NotFound(GuaritaError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class AgentNotFound(NotFound):
    code = "agent_not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class BatchNotFound(NotFound):
    code = "batch_not_found"


class RequestNotFound(NotFound):
    code = "request_not_found"


class Conflict(GuaritaError):
    """The request is sound, but the resource's state refuses it (an ended batch)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class DeployFrozen(Conflict):
    """A rollout refused: an agent's error budget is used up (docs/slo.md)."""

    code = "deploy_frozen"


class PayloadTooLarge(GuaritaError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(GuaritaError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limited"


class RateLimitExceeded(RateLimited):
    """A limit of the caller's key, tier or address (``traffic/``)."""

    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """A spend budget (key, agent or total) is used up for its period."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamRateLimited(RateLimited):
    code = "upstream_rate_limited"


class UpstreamError(GuaritaError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamAuthFailed(UpstreamError):
    code = "upstream_auth"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamInvalidResponse(UpstreamError):
    """The upstream answered 2xx with something that is not the documented answer."""

    code = "upstream_invalid_response"


class UpstreamTruncated(UpstreamError):
    """A stream that ended without its end marker or a finish reason: a cut-off answer."""

    code = "upstream_truncated"


class QualityRejected(UpstreamError):
    """The upstream answered, but the answer failed a quality check (empty, bad JSON...)."""

    code = "quality_rejected"


class ServiceUnavailable(GuaritaError):
    status_code = 503
    error_type = "service_unavailable"
    code = "overloaded"


class CircuitOpen(ServiceUnavailable):
    code = "circuit_open"


class UpstreamTimeout(GuaritaError):
    status_code = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    code = "deadline_exceeded"
