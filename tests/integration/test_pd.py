"""Prefill/decode disaggregation through the real Envoy: simulated prefill and decode engines
speaking SGLang's bootstrap, vLLM's NIXL two-step and llm-d's sidecar header, driven by the
openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, free_port, local_fleet, start_sims

MODEL = "pd-model"
RUNTIME = {"sglang": "sglang", "nixl": "vllm", "sidecar": "vllm"}


def pd_sims(protocol: str, prefills: int = 2, decodes: int = 2) -> list[SimSpec]:
    """Prefill sims announce their own port as the bootstrap port (where decode sims fetch)."""
    fast = ["--ttft-ms", "1", "--tpot-ms", "1", "--prefill-tokens-per-sec", "100000"]
    prefill_protocol = "nixl" if protocol == "sidecar" else protocol
    specs = []
    for i in range(prefills):
        port = free_port()
        specs.append(SimSpec(f"p{i}", MODEL, [*fast, "--role", "prefill", "--pd-protocol",
                                              prefill_protocol], port=port, worker={
            "worker_type": "prefill", "runtime_type": RUNTIME[protocol],
            "bootstrap_port": port}))
    for i in range(decodes):
        specs.append(SimSpec(f"d{i}", MODEL, [*fast, "--role", "decode", "--pd-protocol",
                                              protocol], worker={
            "worker_type": "decode", "runtime_type": RUNTIME[protocol],
            **({"kv_connector": "llm-d"} if protocol == "sidecar" else {})}))
    return specs


@pytest.fixture(scope="module", params=["sglang", "nixl", "sidecar"])
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    with local_fleet(pd_sims(request.param), policy="round_robin",
                     picker_settings={"enable_igw": True}) as running:
        yield running


def pd_report(fleet: Fleet, worker_id: str) -> dict[str, Any]:
    answer = loopback().get(f"{fleet.sim_url(worker_id)}/sim/pd", timeout=5)
    answer.raise_for_status()
    report: dict[str, Any] = answer.json()
    return report


def in_flight(fleet: Fleet) -> int:
    workers = loopback().get(f"{fleet.admin_url}/workers", timeout=5).json()["workers"]
    return sum(int(w["state"]["in_flight"]) for w in workers)


def wait_idle(fleet: Fleet) -> None:
    deadline = time.monotonic() + 5
    while in_flight(fleet) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(fleet) == 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_each_protocol_end_to_end(fleet: Fleet, api: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="x", max_retries=0)
    before = {d: len(pd_report(fleet, d)["received"]) for d in ("d0", "d1")}
    for i in range(4):
        if api == "chat":
            reply: Any = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=3, stream=stream)
        else:
            reply = client.completions.create(model=MODEL, prompt=f"question {i}",
                                              max_tokens=3, stream=stream)
        text = "".join(_texts(reply, api, stream))
        assert len(text.split()) == 3  # the decode worker generated, not the prefill one
    received = {d: pd_report(fleet, d)["received"][before[d]:] for d in ("d0", "d1")}
    assert sum(len(r) for r in received.values()) == 4  # every request reached a decode sim
    for entries in received.values():  # and each came with what its protocol needs
        for entry in entries:
            assert ("bootstrap_room" in entry or "kv_transfer_params" in entry
                    or "x-prefiller-host-port" in entry), entry
    wait_idle(fleet)


def _texts(reply: Any, api: str, stream: bool) -> Iterator[str]:
    if not stream:
        yield reply.choices[0].message.content if api == "chat" else reply.choices[0].text
        return
    for chunk in reply:
        if chunk.choices:
            part = chunk.choices[0].delta.content if api == "chat" else chunk.choices[0].text
            yield part or ""


def test_a_request_an_engine_refuses_is_the_clients_error_not_the_engines(fleet: Fleet) -> None:
    """max_tokens 0: the prefill engine answers 400. That is the client's to fix: it gets the
    400 (with the engine's message, not its address), the engine is not blamed, and repeating
    it does not open the prefill engines' circuits for everyone else."""
    bad = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
    for _ in range(4):
        reply = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=bad, timeout=10)
        assert reply.status_code == 400, reply.text
        assert "127.0.0.1" not in reply.text
    client = openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="x", max_retries=0)
    for i in range(4):  # every pair still serves
        client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": f"ok {i}"}])
    metrics = loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
    assert "llm_picker_pd_prefill_failures_total{" not in metrics
    wait_idle(fleet)


def test_the_decode_engine_got_the_room_its_prefill_engine_filled() -> None:
    with local_fleet(pd_sims("sglang", prefills=1, decodes=1),
                     picker_settings={"enable_igw": True}) as fleet:
        reply = loopback().post(f"{fleet.envoy_url}/v1/completions", timeout=10, json={
            "model": MODEL, "prompt": ["first prompt", "second prompt"], "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        (entry,) = pd_report(fleet, "d0")["received"]
        rooms = entry["bootstrap_room"]
        assert isinstance(rooms, list) and len(rooms) == 2  # a batch: one room per prompt
        assert all(0 <= room < 2**63 for room in rooms) and rooms[0] != rooms[1]
        assert entry["bootstrap_port"] == [fleet.sims["p0"].port] * 2
        assert pd_report(fleet, "p0")["held"] == 2
        routers = loopback().get(f"{fleet.admin_url}/routers", timeout=5).json()
        assert routers["enable_igw"] is True
        assert [r["router"] for r in routers["routers"]] == ["http-pd"]


def test_a_nixl_prefill_that_stopped_early_sends_decode_the_clients_request() -> None:
    """vLLM's NixlConnector answers without kv_transfer_params when the prefill did not end by
    its length cap; vLLM's proxy then sends decode the original request. The prefill engine is
    healthy: no failure counted, no strike (one prefill engine serves every request), and the
    decode engine computes the prompt itself."""
    with local_fleet(pd_sims("nixl", prefills=1, decodes=1),
                     picker_settings={"enable_igw": True}) as fleet:
        loopback().post(f"{fleet.sim_url('p0')}/sim/control", json={"prefill_stops_early": 1},
                        timeout=5).raise_for_status()
        client = openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="x", max_retries=0)
        for i in range(6):
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3)
            assert len((reply.choices[0].message.content or "").split()) == 3
        received = pd_report(fleet, "d0")["received"]
        assert len(received) == 6 and not any("kv_transfer_params" in e for e in received)
        assert len(pd_report(fleet, "p0")["received"]) == 6  # every request was prefilled
        metrics = loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
        assert "llm_picker_pd_prefill_failures_total{" not in metrics
        wait_idle(fleet)


@pytest.mark.parametrize("protocol", ["nixl", "sglang"])
def test_both_legs_carry_one_request_id(protocol: str) -> None:
    """As vLLM's proxy sends them (X-Request-Id on prefill and decode): the client's id when
    it sent one, else the one Envoy or the picker made, the same on both legs."""
    with local_fleet(pd_sims(protocol, prefills=1, decodes=1),
                     picker_settings={"enable_igw": True}) as fleet:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        for headers in ({"x-request-id": "client-id-7"}, {}):
            reply = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=body,
                                    headers=headers, timeout=10)
            assert reply.status_code == 200, reply.text
        prefilled = [e.get("x-request-id") for e in pd_report(fleet, "p0")["received"]]
        decoded = [e.get("x-request-id") for e in pd_report(fleet, "d0")["received"]]
        assert prefilled == decoded and prefilled[0] == "client-id-7"
        assert prefilled[1] and prefilled[1] != "client-id-7"
        wait_idle(fleet)


def test_a_killed_prefill_engine_makes_the_picker_choose_another_pair() -> None:
    with local_fleet(pd_sims("nixl", prefills=2, decodes=1),
                     picker_settings={"enable_igw": True,
                                      "health": {"interval_secs": 60}}) as fleet:
        fleet.processes["sim-p0"].stop()
        client = openai.OpenAI(base_url=f"{fleet.envoy_url}/v1", api_key="x", max_retries=0)
        failure = 'llm_picker_pd_prefill_failures_total{worker="p0"}'
        outcomes: list[str] = []
        # Until the policy has tried p0 once (it need not within a fixed few: the prefill
        # policy may prefer p1), bounded.
        for i in range(30):
            try:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=2)
                outcomes.append("ok")
            except openai.APIStatusError as error:
                outcomes.append(str(error.status_code))
            if failure in loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text:
                break
        assert outcomes == ["ok"] * len(outcomes)  # the dead prefill was tried, then the live one
        assert failure in loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
        wait_idle(fleet)


def test_routers_appear_and_retire_with_their_workers(tmp_path: Any) -> None:
    regular = SimSpec("r0", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"])
    with local_fleet([regular], picker_settings={"enable_igw": True}) as fleet:
        def kinds() -> list[str]:
            answer = loopback().get(f"{fleet.admin_url}/routers", timeout=5).json()
            return [r["router"] for r in answer["routers"]]

        assert kinds() == ["http-regular"]
        extra = pd_sims("nixl", prefills=1, decodes=1)
        procs = start_sims(extra, tmp_path)
        try:
            for spec in extra:
                posted = loopback().post(f"{fleet.admin_url}/workers", timeout=10, json={
                    "url": f"http://127.0.0.1:{spec.port}", "id": spec.worker_id,
                    "models": [MODEL], **spec.worker})
                assert posted.status_code == 201, posted.text
            assert kinds() == ["http-pd", "http-regular"]
            reply = loopback().post(f"{fleet.envoy_url}/v1/completions", timeout=10, json={
                "model": MODEL, "prompt": "hello", "max_tokens": 1})
            assert reply.headers["x-picker-sim-worker"] == "d0"  # PD preferred when complete
            for spec in extra:
                gone = loopback().delete(f"{fleet.admin_url}/workers/{spec.worker_id}", timeout=10)
                assert gone.status_code == 200
            assert kinds() == ["http-regular"]
        finally:
            for proc in procs:
                proc.stop()


@pytest.mark.parametrize("body_mode", ["BUFFERED", "FULL_DUPLEX_STREAMED"])
def test_the_rewritten_body_reaches_decode_whole_in_both_body_modes(body_mode: str) -> None:
    """The decode body is longer than the client's (kv_transfer_params added): a stale
    Content-Length would cut it, and the decode sim would refuse the JSON."""
    with local_fleet(pd_sims("nixl", prefills=1, decodes=1), body_mode=body_mode,
                     picker_settings={"enable_igw": True}) as fleet:
        reply = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi " * 50}],
            "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        (entry,) = pd_report(fleet, "d0")["received"]
        assert entry["kv_transfer_params"]["remote_port"] == fleet.sims["p0"].port


def test_the_explain_line_and_records_name_both_workers_of_the_pair() -> None:
    settings = {"enable_igw": True, "explain": {"enabled": True, "allow_header": True}}
    with local_fleet(pd_sims("sglang", prefills=1, decodes=1), policy="round_robin",
                     picker_settings=settings) as running:
        answer = loopback().post(f"{running.envoy_url}/v1/chat/completions", timeout=10, headers={
            "x-llm-picker-explain": "1", "x-request-id": "pair-1"}, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        answer.raise_for_status()
        line = answer.headers["x-llm-picker-explain"]
        assert "worker=d0; role=decode; prefill=p0;" in line, line
        records = loopback().get(f"{running.admin_url}/debug/decisions", timeout=5).json()
        halves = {(d["role"], d["worker"], d["pair"]) for d in records["decisions"]
                  if d["request_id"] == "pair-1"}
        assert halves == {("prefill", "p0", "d0"), ("decode", "d0", "p0")}
