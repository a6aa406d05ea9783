"""The gRPC prefill/decode router through real Envoy (the gateway configuration) and
`llm-picker sim --grpc` processes in prefill and decode roles: Envoy takes the transcoded
Generate call to the decode sim, the picker sends the same call to the prefill sim, and both
meet in the bootstrap room the call's DisaggregatedParams name (as SMG's gRPC PD router does);
and the real SMG gateway in PD mode against the same sims, which answer it the same way."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from picker.tokens import load_tokenizer
from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_GATEWAY, Fleet, SimSpec, free_port, local_fleet
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.integration.conftest import MODEL
from tests.integration.test_grpc_route import (
    MESSAGES,
    events,
    expected_text,
    grpc_sim,
    post,
)
from tests.integration.test_grpc_sim import post_until_served, smg_gateway
from tests.waiting import wait_until

# "PD <role> <request id>: room R at host:port", one line per Generate (picker_sim.grpc_server).
PD_LINE = re.compile(r"PD (prefill|decode) '([^']+)': room (\d+) at ([\d.]+):(\d+)")


def pd_sims(directory: Path, prefills: int) -> list[SimSpec]:
    """Prefill sims with a bootstrap port each (given to the picker as the worker's), and one
    decode sim."""
    sims = []
    for i in range(prefills):
        bootstrap = free_port()
        sim = grpc_sim(f"p{i}", directory, "--role", "prefill", "--bootstrap-port",
                       str(bootstrap))
        sim.worker = {**sim.worker, "worker_type": "prefill", "bootstrap_port": bootstrap}
        sims.append(sim)
    decode = grpc_sim("d0", directory, "--role", "decode")
    decode.worker = {**decode.worker, "worker_type": "decode"}
    return [*sims, decode]


@contextmanager
def start(sims: list[SimSpec]) -> Iterator[Fleet]:
    with local_fleet(sims, policy="round_robin", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, "enable_igw": True,
                                      "health": {"interval_secs": 60}}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama", "llama-3.1")


@pytest.fixture(scope="module")
def fleet(tokenizer_dir: Path) -> Iterator[Fleet]:
    with start(pd_sims(tokenizer_dir, prefills=1)) as running:
        yield running


def rooms(fleet: Fleet, worker_id: str) -> dict[str, tuple[int, str, int]]:
    """What a sim logged receiving: request id -> (room, bootstrap host, bootstrap port)."""
    return {rid: (int(room), host, int(port)) for _, rid, room, host, port
            in PD_LINE.findall(fleet.processes[f"sim-{worker_id}"].log_tail(500))}


def prompt_tokens(directory: Path, body: dict[str, object]) -> int:
    return len(load_tokenizer(str(directory)).body_ids(body))


def test_non_streamed_chat_is_decoded_from_the_prefilled_room(
        fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 7}
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=body, timeout=30,
                               headers={"x-request-id": "pd-plain-1"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"] == {"role": "assistant",
                                               "content": expected_text(tokenizer_dir, 7)}
    prompt = prompt_tokens(tokenizer_dir, body)
    usage = answer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 7)
    # The decode engine computed none of the prompt: all of it came from the prefill's room.
    assert usage["prompt_tokens_details"]["cached_tokens"] == prompt
    # Both engines got the same DisaggregatedParams, naming the prefill's bootstrap server.
    wait_until(lambda: "pd-plain-1" in rooms(fleet, "p0"), what="the prefill sim's PD line")
    decoded, prefilled = rooms(fleet, "d0")["pd-plain-1"], rooms(fleet, "p0")["pd-plain-1"]
    assert decoded == prefilled
    room, host, port = decoded
    assert 0 <= room < 2**31 and (host, port) == ("127.0.0.1", fleet.sims["p0"].worker[
        "bootstrap_port"])


def test_streamed_chat_arrives_as_sse_with_usage(fleet: Fleet, tokenizer_dir: Path) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 9, "stream": True,
            "stream_options": {"include_usage": True}}
    response = post(fleet, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    chunks = events(response)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == expected_text(tokenizer_dir, 9)
    assert len(chunks) > 3  # token by token from the decode engine
    prompt = prompt_tokens(tokenizer_dir, body)
    usage = chunks[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 9)
    assert usage["prompt_tokens_details"]["cached_tokens"] == prompt


def test_each_request_gets_a_room_of_its_own(fleet: Fleet) -> None:
    for i in range(3):
        response = loopback().post(f"{fleet.envoy_url}/v1/completions", timeout=30,
                                   headers={"x-request-id": f"pd-room-{i}"},
                                   json={"model": MODEL, "prompt": f"tell {i}", "max_tokens": 2})
        assert response.status_code == 200, response.text
    wait_until(lambda: "pd-room-2" in rooms(fleet, "p0"), what="the prefill sim's PD lines")
    decoded = rooms(fleet, "d0")
    assert len({decoded[f"pd-room-{i}"][0] for i in range(3)}) == 3
    routers = loopback().get(f"{fleet.admin_url}/routers", timeout=5).json()["routers"]
    assert [r["router"] for r in routers] == ["grpc-pd"]


def test_a_killed_prefill_engine_means_the_next_pair_then_a_503(tokenizer_dir: Path) -> None:
    """As the HTTP PD path: a prefill that cannot start is counted against its worker and
    another pair is tried; with no prefill engine left the client gets a 503."""
    with start(pd_sims(tokenizer_dir, prefills=2)) as fleet:
        fleet.processes["sim-p0"].stop()
        failure = 'llm_picker_pd_prefill_failures_total{worker="p0"}'
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
        statuses = []
        # Until the pair policy has tried p0 once (it need not within a fixed few: the prefill
        # policy may prefer p1, as in the HTTP test), bounded.
        for _ in range(30):
            statuses.append(post(fleet, "/v1/chat/completions", body).status_code)
            if failure in loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text:
                break
        assert statuses == [200] * len(statuses)  # the dead prefill was tried, then p1
        assert failure in loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
        fleet.processes["sim-p1"].stop()
        refused = post(fleet, "/v1/chat/completions", body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["message"]


def test_smg_in_pd_mode_pairs_the_same_sims_the_same_way(
        fleet: Fleet, tokenizer_dir: Path, tmp_path: Path) -> None:
    """SMG (`smg launch --pd-disaggregation`) sends both sims one Generate call with one room,
    as the picker does (the sims log it), and answers with the decode sim's text and counts:
    the sims speak what SMG expects of SGLang engines in PD mode."""
    prefill, decode = fleet.sims["p0"], fleet.sims["d0"]
    bootstrap = prefill.worker["bootstrap_port"]
    workers = ["--pd-disaggregation", "--prefill", f"grpc://127.0.0.1:{prefill.port}",
               str(bootstrap), "--decode", f"grpc://127.0.0.1:{decode.port}"]
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6}
    with smg_gateway(workers, tmp_path) as smg:
        theirs = post_until_served(f"{smg}/v1/chat/completions", body)
    ours = post(fleet, "/v1/chat/completions", body).json()
    assert theirs["choices"][0]["message"]["content"] == expected_text(tokenizer_dir, 6) == \
        ours["choices"][0]["message"]["content"]
    assert theirs["choices"][0]["finish_reason"] == ours["choices"][0]["finish_reason"]
    assert (theirs["usage"]["prompt_tokens"], theirs["usage"]["completion_tokens"]) == \
        (ours["usage"]["prompt_tokens"], ours["usage"]["completion_tokens"])
    smg_id = theirs["id"]  # SMG's request id is its answer's id
    wait_until(lambda: smg_id in rooms(fleet, "p0"), what="the prefill sim's PD line for SMG")
    assert rooms(fleet, "d0")[smg_id] == rooms(fleet, "p0")[smg_id]
    assert rooms(fleet, "d0")[smg_id][1:] == ("127.0.0.1", bootstrap)
