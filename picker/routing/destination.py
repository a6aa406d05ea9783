"""What reaching a worker takes, as request headers: its address, rank and own key.

Written once for every adapter that sets headers on the way to an engine (ext_proc's header
mutation, ext_authz's allowed headers): the destination header Gateway API Inference Extension
gateways route on (`host:port`, or `primary,fallback,...` when the proxy may retry down a list),
the data-parallel rank vLLM and SGLang read, and the worker's own key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from picker.fleet.registry import Worker
from picker.routing import control_headers

__all__ = ["Forward", "Headers", "destination", "reach_headers"]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """What the proxy sends to a prefill/decode pair's decode worker instead of the client's
    request (picker.pd.protocols): a new body (None: unchanged) and headers to set."""

    body: bytes | None = None
    headers: Headers = ()


def destination(worker: Worker, fallbacks: Sequence[Worker] = ()) -> str:
    """The destination header's (and `envoy.lb` metadata's) value."""
    if not fallbacks:
        return worker.host_port
    return ",".join((worker.host_port, *(w.host_port for w in fallbacks)))


def reach_headers(worker: Worker, fallbacks: Sequence[Worker] = ()) -> Headers:
    """The headers that take a request to `worker` (and down `fallbacks` on retries)."""
    spec = worker.spec
    headers = [(control_headers.DESTINATION, destination(worker, fallbacks))]
    if spec.dp_rank is not None:
        headers.append((control_headers.DP_RANK, str(spec.dp_rank)))
    if spec.api_key is not None:
        headers.append(("authorization", f"Bearer {spec.api_key.get_secret_value()}"))
    return tuple(headers)
