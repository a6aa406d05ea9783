"""One HTTP client for the harness's and the tests' short requests to servers on loopback.

`httpx.get(...)` builds a client per call, and building one loads the CA bundle: ~29 ms of CPU
here, against ~0.2 ms for the request itself. The suite made ~3,600 such calls (poll loops
mostly: `stack.wait_http` alone ~1,800), ~97 s of its CPU. This client is built once per
process. It keeps no idle connection, so each request opens its own as `httpx.get`'s did: a
server stopped and another started on the same port between two requests is never reached
through a stale connection, and it keeps no cookie, as a client per call kept none past the
call. It reads proxy settings (HTTP_PROXY, NO_PROXY) once, when built, not at every request. TLS
tests build their own clients (they choose what to trust).
"""

from __future__ import annotations

import functools
from http.cookiejar import DefaultCookiePolicy

import httpx

__all__ = ["loopback"]


@functools.cache
def loopback() -> httpx.Client:
    """The process's client (thread-safe, as httpx clients are); `httpx.get`'s defaults."""
    client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client
