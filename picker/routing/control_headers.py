"""Every HTTP header that steers routing, in one table: who may set it, and that none of them
reaches an engine as a client sent it.

Two kinds, as llm-d-router splits them (pkg/epp/util/request/headers.go:29-46,
InputControlHeaders / OutputInjectionHeaders):

- `PICKER_SET`: only the picker (or the gateway, through metadata) may set these. A client's
  copy must never steer anything: the shipped Envoy bootstraps remove them before the picker's
  filter runs (so a fail-open Envoy with the picker down cannot follow a client-named
  destination), and the picker overwrites or removes them in what it sends upstream.
- `CLIENT_INPUT`: a client may send these as routing input. The picker reads them, then removes
  them from the request the engine receives (they mean nothing to an engine, and a 10 KB
  strategy name need not travel further).

`ALIASES` maps llm-d's current names to the gateway names this project documented first;
`client_value` reads either, llm-d's first, as llm-d-router's GetLowerCaseHeaderValue does
(pkg/epp/metadata/consts.go:71-100). `STRIPPED` is everything an engine must not receive.

No imports: the Envoy adapters, the core and the bootstrap tests all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ALIASES",
    "CLIENT_INPUT",
    "DESTINATION",
    "DIRECT",
    "DP_RANK",
    "EXPLAIN",
    "FAIRNESS_ID",
    "HOP",
    "LEASE",
    "MODEL_NAME_REWRITE",
    "OBJECTIVE",
    "PICKER_SET",
    "PREFILLER",
    "SERVED",
    "SLO_TPOT",
    "SLO_TTFT",
    "STRATEGY",
    "STRIPPED",
    "SUBSET",
    "client_value",
]

# -- set by the picker only ------------------------------------------------------------------
# The Gateway API Inference Extension's names (llm-d-router pkg/epp/metadata/consts.go:22-36):
# the destination an ORIGINAL_DST cluster follows, the gateway's subset hint and the endpoint
# that served (both metadata keys; a client's header of the same name is never read).
DESTINATION = "x-gateway-destination-endpoint"
SUBSET = "x-gateway-destination-endpoint-subset"
SERVED = "x-gateway-destination-endpoint-served"
# Data-parallel rank for engines running several ranks behind one port (vLLM, SGLang read it).
DP_RANK = "x-data-parallel-rank"
# llm-d's routing sidecar fetches the prefill from this host:port.
PREFILLER = "x-prefiller-host-port"
# The authz mode's lease token, returned to the picker by Envoy's access log.
LEASE = "x-llm-picker-lease"
# envoy-authz.yaml's /v1/models route marks requests the check server answers itself.
DIRECT = "x-llm-picker-direct"

PICKER_SET: tuple[str, ...] = (DESTINATION, SUBSET, SERVED, DP_RANK, PREFILLER, LEASE, DIRECT)

# -- set by the picker, and read back when the request comes round again ----------------------
# The pickers a request has passed (picker.routing.hops): neither removed before the picker
# reads it nor left as a client sent it (every routed request gets it set).
HOP = "x-llm-picker-hop"

# -- sent by clients as routing input --------------------------------------------------------
STRATEGY = "x-routing-strategy"
EXPLAIN = "x-llm-picker-explain"
SLO_TTFT = "x-slo-ttft-ms"
SLO_TPOT = "x-slo-tpot-ms"  # not read yet; stripped like its sibling
# Flow control's band and flow (picker.routing.flow.key), read only when flow control is on and
# flow.trust_client_headers says the proxy in front sets or vets them.
OBJECTIVE = "x-gateway-inference-objective"
FAIRNESS_ID = "x-gateway-inference-fairness-id"
MODEL_NAME_REWRITE = "x-gateway-model-name-rewrite"  # picker.routing.model_rewrite

# llm-d's current name -> the name this project reads (llm-d-router
# pkg/epp/metadata/consts.go:38-55: the x-gateway-* and x-slo-* names are its deprecated
# aliases).
ALIASES: Mapping[str, str] = {
    "x-llm-d-slo-ttft-ms": SLO_TTFT,
    "x-llm-d-slo-tpot-ms": SLO_TPOT,
    "x-llm-d-inference-objective": OBJECTIVE,
    "x-llm-d-inference-fairness-id": FAIRNESS_ID,
    "x-llm-d-model-name-rewrite": MODEL_NAME_REWRITE,
}

CLIENT_INPUT: tuple[str, ...] = (STRATEGY, EXPLAIN, SLO_TTFT, SLO_TPOT, OBJECTIVE, FAIRNESS_ID,
                                 MODEL_NAME_REWRITE, *ALIASES)

STRIPPED: tuple[str, ...] = (*PICKER_SET, *CLIENT_INPUT)

_NAMES: Mapping[str, tuple[str, ...]] = {
    name: (*(alias for alias, target in ALIASES.items() if target == name), name)
    for name in CLIENT_INPUT if name not in ALIASES
}


def client_value(headers: Mapping[str, str], name: str) -> str | None:
    """A client-input header's value under llm-d's current name or this project's (lower-case
    keys), the current name first; None when the request carries neither."""
    for key in _NAMES[name]:
        value = headers.get(key)
        if value is not None:
            return value
    return None
