"""The TLS context every HTTP client to workers verifies with, made once per process.

httpx builds a context of its own for each client it opens, loading the CA bundle each time
(~40 ms of CPU here); the picker opens a client per job (health and scraping, discovery,
prefill, remote tokenizers, adapter loads), and `serve --workers N` starts N pickers. One
context, read-only once made, serves them all.
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["worker_tls"]


@functools.cache
def worker_tls() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), shared."""
    return httpx.create_ssl_context()
