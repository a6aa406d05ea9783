"""Prefill/decode disaggregation: the protocols engines speak (pure), and the prefill step."""

from picker.pd.prefill import PrefillClient
from picker.pd.protocols import (
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    Bootstrap,
    PdProtocol,
    SglangPair,
    grpc_bootstrap,
    nixl_prefill_body,
    protocol_of,
    with_bootstrap,
    with_kv_transfer_params,
)

__all__ = [
    "PREFILLER_HEADER", "REQUEST_ID_HEADER", "Bootstrap", "PdProtocol", "PrefillClient",
    "SglangPair", "grpc_bootstrap",
    "nixl_prefill_body", "protocol_of", "with_bootstrap", "with_kv_transfer_params",
]
