"""A loopback HTTP server answering from a table the test controls, recording what it received.

For the few tests that need an engine to say something the simulator does not (SGLang's info
endpoints, a health endpoint flipping status), or to show exactly which headers reached an
engine (a POST is answered with a minimal chat completion, and its path and headers kept)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StubServer"]

_COMPLETION = {"id": "stub-1", "object": "chat.completion", "model": "stub", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


class StubServer:
    def __init__(self, pages: dict[str, Any] | None = None, status: int = 200) -> None:
        self.pages = pages or {}  # path -> JSON body; paths not listed answer `status`, empty
        self.status = status
        self.auth: list[str | None] = []
        # Every POST: (path, lower-cased headers, body length).
        self.posts: list[tuple[str, dict[str, str], int]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as engines serve

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stub.auth.append(self.headers.get("authorization"))
                page = stub.pages.get(self.path)
                self._reply(200 if page is not None else stub.status,
                            b"" if page is None else json.dumps(page).encode())

            def do_HEAD(self) -> None:  # noqa: N802
                page = stub.pages.get(self.path)
                self.send_response(200 if page is not None else stub.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                stub.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                   length))
                self._reply(200, json.dumps(_COMPLETION).encode())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
