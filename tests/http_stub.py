"""A loopback HTTP server answering GETs from a table the test controls, recording auth.

For the few tests that need an engine to say something the simulator does not (SGLang's info
endpoints, a health endpoint flipping status)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StubServer"]


class StubServer:
    def __init__(self, pages: dict[str, Any] | None = None, status: int = 200) -> None:
        self.pages = pages or {}  # path -> JSON body; paths not listed answer `status`, empty
        self.status = status
        self.auth: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stub.auth.append(self.headers.get("authorization"))
                page = stub.pages.get(self.path)
                self.send_response(200 if page is not None else stub.status)
                self.end_headers()
                if page is not None:
                    self.wfile.write(json.dumps(page).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
