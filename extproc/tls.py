"""The server side of `extproc.tls`, for every port it covers: the ext_proc gRPC port and, in
`--mode authz`, the check server (HTTP) and the access-log gRPC port.

With `client_ca_file` each of them completes a TLS handshake only with a client presenting a
certificate signed by that CA (mutual TLS): that is what lets the picker hand worker api_keys to
its clients (ExtprocConfig.worker_keys_problem). `self_signed` encrypts and authenticates nobody.
"""

from __future__ import annotations

import ssl
from typing import Literal

import grpc

from extproc.self_signed import self_signed_pair
from picker.listen import TlsConfig

__all__ = ["grpc_credentials", "ssl_context"]


def grpc_credentials(tls: TlsConfig | Literal["self_signed"],
                     host: str) -> grpc.ServerCredentials:
    """gRPC server credentials; client certificates required when a client CA is given."""
    if tls == "self_signed":
        return grpc.ssl_server_credentials([self_signed_pair(host)])
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """An asyncio server's TLS context; client certificates required when a client CA is
    given (a client without one fails the handshake before a byte of HTTP is read)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
