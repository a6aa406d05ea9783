"""One ext_authz check = one routing decision; one access-log entry = its release. No I/O here.

Envoy's ext_authz filter (HTTP service, `with_request_body`) sends the client's method, path,
headers and buffered body; a 200 answer lets the request through with the answer's headers
copied onto it (`allowed_upstream_headers`): the destination the ORIGINAL_DST cluster follows,
and a lease token. Any other status is a denial that Envoy forwards to the client as it is: the
picker's OpenAI-shaped JSON error.

ext_authz has no response path, so the picker learns that a request ended from Envoy's gRPC
access-log service: each entry carries the request headers as forwarded upstream, lease token
included (`additional_request_headers_to_log`). The token is random, not a counter: a client
could put a counter value of its own on a request the picker denies (denials cannot change
request headers) and so release another request's slot. An entry that never arrives (the log
stream is lossy by design) leaves the lease to the lease book's expiry (limits.timeout_secs).

The HTTP server (authz.http) and the log service (authz.als) only move bytes to and from here,
so tests drive both halves without Envoy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from authz.tokens import LEASE_HEADER, new_token
from picker.errors import BodyTooLarge, ProxyMisconfigured, RequestError, UnsupportedPath
from picker.routing import control_headers
from picker.routing.contract import Picker
from picker.routing.destination import Headers, reach_headers
from picker.routing.gateway_probes import is_probe, probe_target
from picker.routing.leases import Lease
from picker.routing.model_list import model_object, models_path_id
from picker.routing.openai_body import api_of, parse_request
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest

__all__ = ["Answer", "Checker"]
# Added by envoy-authz.yaml's /v1/models route, which skips the check: answer, do not check.
DIRECT_HEADER = control_headers.DIRECT
# Envoy's ext_authz removes the request headers named here (comma-separated) before forwarding:
# every control header the answer does not set (a client's own rank, strategy, SLO...) is
# removed, none reaches the worker (picker.routing.control_headers).
_REMOVE_HEADER = "x-envoy-auth-headers-to-remove"
_JSON = ("content-type", "application/json")
# Recent release lags kept for the shutdown summary (how stale in-flight counts run).
_LAG_SAMPLES = 4096


@dataclass(frozen=True, slots=True)
class Answer:
    """What the HTTP server writes back: 200 = allow (headers go upstream), else a denial."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


class Checker:
    """Turns checks into leases and access-log entries into releases; owns the token table."""

    def __init__(self, picker: Picker, max_body_bytes: int,
                 token_prefix: str = "") -> None:
        """`token_prefix`: this process's (authz.tokens.process_prefix) in `serve --workers`."""
        self._picker = picker
        self._token_prefix = token_prefix
        self._max_body = max_body_bytes
        self._leases: dict[str, Lease] = {}
        self.lags: deque[float] = deque(maxlen=_LAG_SAMPLES)

    @property
    def open_leases(self) -> int:
        return len(self._leases)

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    def too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"request body exceeds the {self._max_body} byte limit")

    def parse(self, path: str, headers: dict[str, str],
              body: bytes) -> RoutingRequest | Answer:
        """The routing request, or the denial for a body the picker cannot route; or, for a
        request Envoy sent straight here (`DIRECT_HEADER`), its answer."""
        if headers.get(DIRECT_HEADER) == "models":
            return self._models(path, headers)
        if not body and is_probe(headers.get(":method", ""), path):
            return self._probe()
        if len(body) > self._max_body:
            return self.deny(self.too_large(), path)
        try:
            # Envoy's access log, all the picker hears of the answer, carries no usage.
            return parse_request(path, body, headers, answer_seen=False)
        except RequestError as error:
            return self.deny(error, path)

    def check(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """The whole check when routing needs no await (`Picker.awaits` is False)."""
        request = self.parse(path, headers, body)
        if isinstance(request, Answer):
            return request
        try:
            lease = self._picker.route_sync(request)
        except RequestError as error:
            return self.deny(error, path)
        return self.allow(lease, path)

    async def check_async(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """The check when routing awaits (remote tokenizer, admission queue, PD step)."""
        request = self.parse(path, headers, body)
        if isinstance(request, Answer):
            return request
        try:
            lease = await self._picker.route(request)
        except RequestError as error:
            return self.deny(error, path)
        return self.allow(lease, path)

    def _models(self, path: str, headers: dict[str, str]) -> Answer:
        """GET (or HEAD) /v1/models or /v1/models/{id}, as the ext_proc adapter answers it
        (envoy-authz.yaml routes only those methods here)."""
        model_id = models_path_id(path)
        try:
            if model_id is None:
                raise UnsupportedPath(f"no such path: {path[:100]!r}")
            body = model_object(self._picker.workers(), model_id)
        except RequestError as error:
            return self.deny(error)
        return Answer(200, (_JSON,), b"" if headers.get(":method") == "HEAD" else body)

    def _probe(self) -> Answer:
        """A health probe through the gateway: to a routable worker, no lease
        (picker.routing.gateway_probes)."""
        try:
            worker = probe_target(self._picker.workers())
        except RequestError as error:
            return self.deny(error)
        return _routed(reach_headers(worker))

    def allow(self, lease: Lease, path: str = "") -> Answer:
        forward = lease.forward
        if forward is not None and forward.body is not None:
            # ext_authz can add headers but never replace the body a PD protocol or a model
            # rewrite gives the engine.
            lease.release(Outcome.CANCELLED)
            return self.deny(ProxyMisconfigured(
                "the picker rewrites this request's body (a prefill/decode protocol or a model "
                "rewrite): serve it over ext_proc"), path)
        token = new_token(self._token_prefix)
        self._leases[token] = lease
        return _routed((*lease.headers, (LEASE_HEADER, token)))

    def deny(self, error: RequestError, path: str = "") -> Answer:
        """The refusal, in the error shape of the API `path` targets (Anthropic's on its
        paths, OpenAI's otherwise)."""
        self._picker.reject(error)
        api = api_of(path)
        return Answer(error.status, (_JSON, *error.headers().items()),
                      error.to_json(api is not None and api.anthropic))

    def ended(self, token: str, status: int, client_gone: bool, lag: float | None) -> bool:
        """An access-log entry for the request holding `token`: release its slot once. False
        for tokens the picker does not hold (denied requests, another picker's, a replay)."""
        lease = self._leases.pop(token, None)
        if lease is None:
            return False
        if status >= 500:
            outcome = Outcome.UPSTREAM_ERROR
        elif client_gone:
            outcome = Outcome.CANCELLED
        else:
            outcome = Outcome.COMPLETED
        if lag is not None:
            self.lags.append(lag)
        lease.release(outcome)
        return True

    def forget_released(self) -> int:
        """Drop tokens whose lease the book already expired (their log entry never came)."""
        stale = [token for token, lease in self._leases.items() if not lease.open]
        for token in stale:
            del self._leases[token]
        return len(stale)


def _routed(headers: Headers) -> Answer:
    """Allowed with `headers` set, and every control header the picker did not set removed."""
    written = {key for key, _ in headers}
    return Answer(200, (*headers, (_REMOVE_HEADER, ",".join(
        name for name in control_headers.STRIPPED if name not in written))))
