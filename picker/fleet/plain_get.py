"""PlainGetter: HTTP/1.1 GETs to plain `http://` workers over one kept-alive connection each.

Why not httpx for these: health checks and engine-load scrapes are one small GET per worker per
second, and through httpx each cost 1.2 ms of CPU (anyio, httpcore's pool, h11) where a GET here
costs 0.11 ms (in one process, 300 workers on kept connections, both figures including the test
server's share). With 1,000 live + 1,000 unreachable workers that is a 3.79 s probe period with
the picker at 90% of a core against 1.06 s at 43% (docs/benchmarks.md, health checks at
scale). So this module speaks just enough HTTP/1.1 for them, and WorkerRequests sends
everything else (https, or an http proxy set in the environment, which httpx honours) through
httpx:

- one connection per worker, kept between requests and reopened after any error; a kept
  connection the worker closed while idle (its keep-alive timeout) is retried once on a new one,
  as long as no byte of the answer had arrived;
- bodies by Content-Length, chunked, or up to the close, never more than `body_limit` bytes;
- no redirects (as httpx's default); no Accept-Encoding, so a conforming server answers
  uncompressed, and a compressed answer is refused;
- a deadline over the whole request, connect included (asyncio.timeout);
- idle connections bounded (least recently used closed first) so a large fleet cannot use up
  the process's file descriptors.

Any failure is None, as a worker that did not answer; the caller decides what that means.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

__all__ = ["Answer", "PlainGetter"]

log = logging.getLogger("llm_picker.plain_get")

# Each live worker keeps an idle connection per getter (health, load): at most this share of
# the soft file-descriptor limit, so that Envoy-facing sockets and files always have the rest.
_FD_SHARE = 8
# Anything but printable ASCII in a header (tab allowed) or in the url and path (no space):
# CR or LF would end or split the request, and other bytes need an encoding to be chosen. A
# request carrying any goes through httpx, which refuses or encodes it as it always did.
_FORBIDDEN = re.compile(r"[^\t\x20-\x7e]")
_FORBIDDEN_IN_TARGET = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's answer: what health checks and scrapes read of it."""

    status: int
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    host_header: str


class _Closed(Exception):
    """The connection ended before the answer was whole."""


class _ClosedIdle(_Closed):
    """A kept connection ended before any byte of the answer: the worker closed it while it
    was idle (a keep-alive timeout), so the request is sent again on a new one."""


@lru_cache(maxsize=65536)
def _target_of(url: str) -> _Target | None:
    """Where a GET to `url` (a worker's scheme://host[:port], as WorkerSpec validates it)
    connects, when this module can send it: plain http; None sends it through httpx."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname
    if parts.scheme != "http" or not host or _FORBIDDEN_IN_TARGET.search(url):
        return None
    shown = f"[{host}]" if ":" in host else host
    return _Target(host, port, shown if parts.port in (None, 80) else f"{shown}:{port}")


def _idle_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // _FD_SHARE)


class PlainGetter:
    """Connections are opened by `get`, never in __init__; `close` ends them all."""

    def __init__(self, body_limit: int, idle_limit: int | None = None) -> None:
        self._body_limit = body_limit
        self._idle_limit = idle_limit if idle_limit is not None else _idle_limit()
        # Idle connections by worker url, least recently used first. A connection in use is
        # out of this map, so two requests to one worker never share one.
        self._idle: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    @staticmethod
    def sendable(url: str, path: str, headers: Mapping[str, str]) -> bool:
        """Whether `get` can send this request as given (else httpx must)."""
        return _target_of(url) is not None and path.startswith("/") \
            and not _FORBIDDEN_IN_TARGET.search(path) \
            and not any(_FORBIDDEN.search(f"{name}{value}") for name, value in headers.items())

    async def get(self, url: str, path: str, headers: Mapping[str, str],
                  deadline: float) -> Answer | None:
        """GET `url` + `path`; None when the worker could not be reached, closed, answered
        what is not HTTP/1.x, or did not finish within `deadline` seconds."""
        target = _target_of(url)
        assert target is not None, "PlainGetter.get of a url sendable() refuses"
        head = [f"GET {path} HTTP/1.1", f"host: {target.host_header}",
                "user-agent: llm-picker", "accept: */*",
                *(f"{name}: {value}" for name, value in headers.items())]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        try:
            async with asyncio.timeout(deadline):
                kept = self._idle.pop(url, None)
                if kept is not None and not kept[0].at_eof():
                    try:
                        return await self._exchange(url, kept, request, reused=True)
                    except _ClosedIdle:
                        pass
                elif kept is not None:
                    kept[1].close()
                connection = await asyncio.open_connection(target.host, target.port,
                                                           limit=64 * 1024)
                return await self._exchange(url, connection, request, reused=False)
        except (OSError, TimeoutError, ValueError, _Closed, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            log.debug("GET %s%s: %s %s", url, path, type(exc).__name__, exc)
            return None

    async def _exchange(self, url: str,
                        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        request: bytes, reused: bool) -> Answer:
        """One request and its whole answer on `connection`, which goes back to the idle map
        when it can be used again and is closed otherwise (on any error or cancellation)."""
        reader, writer = connection
        keep = False
        try:
            writer.write(request)
            closed = _ClosedIdle if reused else _Closed
            try:
                status_line = await reader.readline()
            except ConnectionError as exc:
                raise closed("reset before the answer") from exc
            if not status_line:
                raise closed("closed before the answer")
            answer, keep = await self._read_answer(status_line, reader)
            return answer
        finally:
            if keep:
                self._keep(url, connection)
            else:
                writer.close()

    async def _read_answer(self, status_line: bytes,
                           reader: asyncio.StreamReader) -> tuple[Answer, bool]:
        version, _, rest = status_line.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not rest[:3].isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(rest[:3])
        fields = await self._fields(reader)
        if 100 <= status < 200:  # an interim answer (103 Early Hints): the answer follows
            return await self._read_answer(await reader.readline(), reader)
        encoding = fields.get(b"content-encoding", b"identity").lower()
        if encoding != b"identity":
            raise ValueError(f"content-encoding {encoding[:40]!r} was not asked for")
        connection = fields.get(b"connection", b"").lower()
        keep = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
        if status in (204, 304):
            return Answer(status, b""), keep
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            return Answer(status, await self._chunked(reader)), keep
        if (length := fields.get(b"content-length")) is not None:
            size = int(length)
            if not 0 <= size <= self._body_limit:
                raise ValueError(f"content-length {size} outside 0..{self._body_limit}")
            return Answer(status, await reader.readexactly(size)), keep
        body = await reader.read(self._body_limit + 1)  # delimited by the close
        while len(body) <= self._body_limit and (more := await reader.read(
                self._body_limit + 1 - len(body))):
            body += more
        if len(body) > self._body_limit:
            raise ValueError(f"body over {self._body_limit} bytes")
        return Answer(status, body), False

    @staticmethod
    async def _fields(reader: asyncio.StreamReader) -> dict[bytes, bytes]:
        fields: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n"):
            if not line.endswith(b"\n"):
                raise _Closed("in the headers")
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"bad header line: {line[:80]!r}")
            fields[name.strip().lower()] = value.strip()
        return fields

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise _Closed("in a chunk size")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0 or total + size > self._body_limit:
                raise ValueError(f"chunked body over {self._body_limit} bytes")
            if size == 0:
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
            total += size
        while (line := await reader.readline()) not in (b"\r\n", b"\n"):  # trailers
            if not line:
                raise _Closed("in the trailers")
        return b"".join(parts)

    def _keep(self, url: str,
              connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        replaced = self._idle.pop(url, None)
        if replaced is not None:
            replaced[1].close()
        self._idle[url] = connection
        if len(self._idle) > self._idle_limit:
            oldest = next(iter(self._idle))
            self._idle.pop(oldest)[1].close()

    def forget(self, url: str) -> None:
        """The worker at `url` is gone: close its idle connection."""
        kept = self._idle.pop(url, None)
        if kept is not None:
            kept[1].close()

    def close(self) -> None:
        for _, writer in self._idle.values():
            writer.close()
        self._idle.clear()
