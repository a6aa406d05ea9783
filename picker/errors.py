"""The picker's exceptions, one tree shared by the core and every adapter.

    PickerError
    ├── ConfigError            bad configuration; raised at start-up, names the key
    ├── WorkerConflict         a worker with that url is already registered
    ├── UnknownWorker          no worker with that url or id
    └── RequestError           cannot route this request; carries the status the client sees
        ├── InvalidRequest     400: malformed body, missing model
        ├── UnsupportedPath    404: not an OpenAI endpoint the picker routes
        ├── ModelNotFound      404: no registered worker serves the model
        ├── BodyTooLarge       413: body over the configured limit
        ├── UnsupportedMediaType 415: a content-type that is not JSON
        ├── Overloaded         429: at the concurrency limit (with Retry-After)
        │   └── QuotaExceeded  429: the request's flow is over its requests/tokens per minute
        ├── NoHealthyWorker    503: workers serve the model, none is routable now
        ├── FlowRefused        503: flow control did not dispatch it; `code` says why
        │                      (queue_full, shed, ttl_expired, no_ready_worker), Retry-After
        ├── PrefillFailed      503: every prefill/decode pair tried failed at prefill
        ├── AdapterLoadFailed  503: no engine loaded a LoRA adapter the picker asked it to
        └── ProxyMisconfigured 500: the proxy calls the picker in a way it cannot route

Adapters translate a RequestError in one place each (an Envoy ImmediateResponse, a LiteLLM
exception); the JSON body follows OpenAI's error shape so SDK clients surface the message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

__all__ = [
    "AdapterLoadFailed",
    "BodyTooLarge",
    "ConfigError",
    "FlowRefused",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "NoHealthyWorker",
    "Overloaded",
    "PickerError",
    "PrefillFailed",
    "PrefillRejected",
    "ProxyMisconfigured",
    "QuotaExceeded",
    "RequestError",
    "RoutingLoop",
    "UnknownWorker",
    "UnsupportedMediaType",
    "UnsupportedPath",
    "WorkerConflict",
    "extra_needed",
]


# Anthropic's error types by HTTP status (docs.claude.com/en/api/errors, "HTTP errors"); it
# uses invalid_request_error for other 4xx, and says overloaded_error (its 529) where the
# picker's fleet is out of capacity (503).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}


class PickerError(Exception):
    """Base of every error the picker raises on purpose."""


class ConfigError(PickerError):
    """Configuration rejected; `key` is the dotted path of the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@contextlib.contextmanager
def extra_needed(key: str, extra: str, what: str) -> Iterator[None]:
    """An optional dependency imported inside this block and missing is a ConfigError naming
    the setting that asked for it and the extra that installs it, at start-up."""
    try:
        yield
    except ImportError as exc:
        raise ConfigError(key, f"needs {what}: pip install 'llm-picker[{extra}]' "
                          f"({exc})") from exc


class WorkerConflict(PickerError):
    """Registering a url twice would split its load accounting across two records."""


class UnknownWorker(PickerError):
    pass


class RequestError(PickerError):
    """A request the picker refuses; `status` and `code` are what the client sees."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra response headers the client should see (e.g. Retry-After)."""
        return {}

    def to_json(self, anthropic: bool = False) -> bytes:
        """OpenAI-compatible error body, so OpenAI SDKs show `message` to the caller; with
        `anthropic`, Anthropic's (`{"type": "error", "error": {"type", "message"}}`) for
        requests on its Messages paths, which Anthropic's SDKs read."""
        if anthropic:
            kind = _ANTHROPIC_TYPES.get(self.status, "invalid_request_error" if self.status < 500
                                        else "api_error")
            return json.dumps({"type": "error",
                               "error": {"type": kind, "message": self.message}}).encode()
        error = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.param is not None:
            error["param"] = self.param
        return json.dumps({"error": error}).encode()


class InvalidRequest(RequestError):
    pass


class UnsupportedPath(RequestError):
    status = 404
    code = "unsupported_path"
    error_type = "not_found_error"


class MethodNotAllowed(RequestError):
    """Only POST reaches an inference path; the answer says so (RFC 9110 requires Allow)."""

    status = 405
    code = "method_not_allowed"

    def headers(self) -> dict[str, str]:
        return {"allow": "POST"}


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"
    error_type = "not_found_error"


class BodyTooLarge(RequestError):
    status = 413
    code = "body_too_large"


class NoHealthyWorker(RequestError):
    status = 503
    code = "no_healthy_worker"
    error_type = "service_unavailable_error"


class PrefillFailed(RequestError):
    status = 503
    code = "prefill_failed"
    error_type = "service_unavailable_error"


class AdapterLoadFailed(RequestError):
    status = 503
    code = "adapter_load_failed"
    error_type = "service_unavailable_error"


class PrefillRejected(RequestError):
    """The prefill engine refused the request itself (a 4xx: max_tokens 0, an API it does not
    serve): the client's to fix, so its status goes back to the client, and neither the engine
    is blamed nor another pair tried."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ProxyMisconfigured(RequestError):
    status = 500
    code = "proxy_misconfigured"
    error_type = "server_error"


class RoutingLoop(RequestError):
    """The request came back through the picker (picker.routing.hops): 508 Loop Detected
    (RFC 5842), as a proxy answers a loop it found."""

    status = 508
    code = "routing_loop"
    error_type = "server_error"


class Overloaded(RequestError):
    status = 429
    code = "overloaded"
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class QuotaExceeded(Overloaded):
    """The request's flow spent its budget (picker.routing.flow.quota); Retry-After says when
    the budget will hold the request."""

    code = "quota_exceeded"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class FlowRefused(RequestError):
    """Flow control could not dispatch the request (picker.routing.flow): the fleet is full
    now, so 503 with Retry-After; `code` names the reason."""

    status = 503
    error_type = "service_unavailable_error"

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}
