"""PlainGetter against real HTTP servers on 127.0.0.1: one kept connection per worker, bodies
by length, chunks or close (bounded), and every way a worker can fail ends in None within the
deadline, on a connection that is never used again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from picker.fleet.plain_get import Answer, PlainGetter

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `make(server)` per connection; counts connections and keeps
    each request's head."""

    def __init__(self, make: Callable[[Server], Handler]) -> None:
        self._handler = make(self)
        self.connections = 0
        self.closed = 0  # connections the client ended
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError):
            await self._handler(reader, writer)
            await reader.read()  # until the client ends the connection
        writer.close()
        # Closed before it is counted: a test that ends on the count must not leave this
        # side's transport to the garbage collector (a ResourceWarning the tests make errors).
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if reader.at_eof():
            self.closed += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        finally:
            self._server.close()


@pytest.fixture
async def getter() -> AsyncIterator[PlainGetter]:
    plain = PlainGetter(body_limit=1024)
    yield plain
    plain.close()


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """A handler that answers successive requests on a connection with `answers`, then
    waits for the client to close (or closes)."""
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await server.read_head(reader)
                writer.write(answer)
                await writer.drain()
            if then_close:
                writer.close()
        return handle
    return make


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


async def test_one_connection_is_kept_for_a_workers_requests(getter: PlainGetter) -> None:
    server = Server(answering(OK, OK, OK))
    async with server.running() as url:
        for _ in range(3):
            assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 1
    assert server.heads[0].startswith(b"GET /health HTTP/1.1\r\n")
    assert f"host: {url.removeprefix('http://')}\r\n".encode() in server.heads[0]


async def test_headers_are_sent(getter: PlainGetter) -> None:
    server = Server(answering(OK))
    async with server.running() as url:
        assert await getter.get(url, "/health", {"authorization": "Bearer k-1"}, 1.0)
    assert b"\r\nauthorization: Bearer k-1\r\n" in server.heads[0]


async def test_chunked_body_with_extension_and_trailer(getter: PlainGetter) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n")
    server = Server(answering(chunked, OK))
    async with server.running() as url:
        assert await getter.get(url, "/metrics", {}, 1.0) == Answer(200, b"hello world")
        # The whole chunked body was read: the next answer on the connection is its own.
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 1


async def test_an_interim_answer_is_skipped(getter: PlainGetter) -> None:
    server = Server(answering(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK, OK))
    async with server.running() as url:
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 1


async def test_a_body_delimited_by_the_close(getter: PlainGetter) -> None:
    server = Server(answering(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", then_close=True))
    async with server.running() as url:
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"until the end")


async def test_bodies_over_the_limit_are_refused(getter: PlainGetter) -> None:
    big = b"x" * 2000
    server = Server(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + big))
    chunked = Server(answering(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                               + b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))
                               + b"0\r\n\r\n"))
    async with server.running() as url, chunked.running() as chunked_url:
        assert await getter.get(url, "/metrics", {}, 1.0) is None
        assert await getter.get(chunked_url, "/metrics", {}, 1.0) is None


async def test_a_non_2xx_answer_is_an_answer_that_is_not_success(getter: PlainGetter) -> None:
    server = Server(answering(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\n"
                              b"busy"))
    async with server.running() as url:
        answer = await getter.get(url, "/health", {}, 1.0)
    assert answer == Answer(503, b"busy")
    assert not answer.is_success


async def test_connection_close_is_honoured(getter: PlainGetter) -> None:
    server = Server(answering(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2"
                              b"\r\n\r\n{}"))
    async with server.running() as url:
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 2


async def test_a_server_closing_mid_answer_is_no_answer_and_not_reused(
        getter: PlainGetter) -> None:
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            if server.connections == 1:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
                await writer.drain()
                writer.close()
                return
            writer.write(OK)
            await writer.drain()
        return handle

    server = Server(make)
    async with server.running() as url:
        assert await getter.get(url, "/health", {}, 1.0) is None
        assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 2


async def test_a_kept_connection_the_worker_closed_is_retried_on_a_new_one(
        getter: PlainGetter) -> None:
    """An engine's keep-alive timeout (uvicorn's is 5 s) closes the idle connection; the
    next request must not count that as a failed check."""
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            writer.write(OK)
            await writer.drain()
            # Closes once the client sent its next request, unanswered: the race the
            # at_eof() check cannot see.
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
        return handle

    server = Server(make)
    async with server.running() as url:
        for _ in range(3):
            assert await getter.get(url, "/health", {}, 1.0) == Answer(200, b"{}")
    assert server.connections == 3


async def test_a_worker_that_never_answers_ends_at_the_deadline(getter: PlainGetter) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = Server(lambda _: silent)
    async with server.running() as url:
        started = time.monotonic()
        # The outer bound only turns a hang into a failure; the deadline must end it sooner.
        assert await asyncio.wait_for(getter.get(url, "/health", {}, 0.2), 5) is None
        assert time.monotonic() - started < 1.0


async def test_a_refused_port_is_no_answer(getter: PlainGetter) -> None:
    async with Server(answering()).running() as url:
        pass  # closed: nothing listens on its port now
    assert await asyncio.wait_for(getter.get(url, "/health", {}, 1.0), 5) is None


# Left open, the connection would be closed by the garbage collector with only a warning.
@pytest.mark.filterwarnings("error::ResourceWarning",
                            "error::pytest.PytestUnraisableExceptionWarning")
async def test_a_cancelled_request_closes_its_connection(getter: PlainGetter) -> None:
    """Cut short mid-answer, the connection holds the rest of that answer: it is closed, not
    kept and not left for the garbage collector."""
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfir")
            await writer.drain()
        return handle

    server = Server(make)
    async with server.running() as url:
        request = asyncio.create_task(getter.get(url, "/health", {}, 2.0))
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0.05)
        assert server.closed == 1


async def test_idle_connections_are_bounded() -> None:
    getter = PlainGetter(body_limit=1024, idle_limit=2)
    servers = [Server(answering(OK, OK)) for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(server.running()) for server in servers]
        for url in urls:
            assert await getter.get(url, "/health", {}, 1.0)
        await asyncio.sleep(0.05)
        # The least recently used one was closed to keep two.
        assert [server.closed for server in servers] == [1, 0, 0]
        getter.close()
        await asyncio.sleep(0.05)
        assert [server.closed for server in servers] == [1, 1, 1]


@pytest.mark.parametrize(("url", "path", "headers"), [
    ("https://127.0.0.1:8000", "/health", {}),
    ("grpc://127.0.0.1:8000", "/health", {}),
    ("http://127.0.0.1:8000", "health", {}),
    ("http://127.0.0.1:8000", "/he alth", {}),
    ("http://127.0.0.1:8000", "/health", {"authorization": "Bearer a\r\nx-injected: 1"}),
    ("http://127.0.0.1:8000", "/health", {"authorization": "Bearer clé"}),
    ("http://127.0.0.1:8000", "/héalth", {}),
])
def test_what_it_cannot_send_goes_to_httpx(url: str, path: str,
                                           headers: dict[str, str]) -> None:
    assert not PlainGetter.sendable(url, path, headers)
    assert PlainGetter.sendable("http://127.0.0.1:8000", "/health", {"authorization": "k"})
