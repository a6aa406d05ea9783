"""The simulated engine's LoRA adapters over real HTTP: what vLLM 0.33 lists, answers and
reports (picker_sim.lora cites the vLLM lines each fact comes from)."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.loopback import loopback
from picker_sim import SimConfig, add_sim_arguments, config_from_args
from tests.sim_thread import running_sim
from tests.waiting import wait_until


@pytest.fixture
def lora_sim() -> Iterator[str]:
    with running_sim(max_loras=1, lora_modules=("sql=/adapters/sql", "chat"),
                     runtime_lora_updating=True, tpot_ms=20, lora_load_ms=30) as url:
        yield url


def ask(base: str, model: str, max_tokens: int = 1) -> httpx.Response:
    return loopback().post(f"{base}/v1/completions", timeout=10,
                           json={"model": model, "prompt": "a b", "max_tokens": max_tokens})


def lora_series(base: str) -> list[tuple[dict[str, str], float]]:
    text = loopback().get(f"{base}/metrics").text
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "vllm:lora_requests_info"]


def newest(base: str) -> dict[str, str]:
    return max(lora_series(base), key=lambda series: series[1])[0]


def test_models_list_adapters_with_parent_and_root_and_adapters_are_served(
        lora_sim: str) -> None:
    cards = loopback().get(f"{lora_sim}/v1/models").json()["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [
        ("m", None, "m"), ("sql", "m", "/adapters/sql"), ("chat", "m", "/adapters/chat")]
    response = ask(lora_sim, "sql")
    assert response.status_code == 200 and response.json()["model"] == "sql"
    assert ask(lora_sim, "nope").status_code == 404


def test_load_and_unload_answer_as_vllm(lora_sim: str) -> None:
    def load(**body: object) -> httpx.Response:
        return loopback().post(f"{lora_sim}/v1/load_lora_adapter", json=body)

    ok = load(lora_name="new", lora_path="/adapters/new")
    assert (ok.status_code, ok.text) == (200, "Success: LoRA adapter 'new' added successfully.")
    assert ask(lora_sim, "new").status_code == 200
    for body, status in (({"lora_name": "new", "lora_path": "/a"}, 400),  # already loaded
                         ({"lora_name": "x"}, 400),  # no path
                         ({"lora_name": "m", "lora_path": "/a"}, 400),  # the base model
                         ({"lora_name": "x", "lora_path": "/missing/x"}, 404)):
        refused = load(**body)
        error = refused.json()["error"]
        assert (refused.status_code, error["code"]) == (status, status), body
        assert error["type"] == ("NotFoundError" if status == 404 else "InvalidUserInput")
    assert load(lora_name="new", lora_path="/b", load_inplace=True).status_code == 200
    gone = loopback().post(f"{lora_sim}/v1/unload_lora_adapter", json={"lora_name": "new"})
    assert (gone.status_code, gone.text) == (
        200, "Success: LoRA adapter 'new' removed successfully.")
    again = loopback().post(f"{lora_sim}/v1/unload_lora_adapter", json={"lora_name": "new"})
    assert again.status_code == 404 and again.json()["error"]["type"] == "NotFoundError"
    assert ask(lora_sim, "new").status_code == 404
    assert loopback().get(f"{lora_sim}/sim/stats").json()["lora_load_calls"] == 6


def test_load_endpoints_exist_only_with_runtime_updating() -> None:
    with running_sim(max_loras=2, lora_modules=("sql",)) as url:
        response = loopback().post(f"{url}/v1/load_lora_adapter",
                                   json={"lora_name": "x", "lora_path": "/x"})
        assert response.status_code == 404


def test_info_gauge_lists_adapters_with_requests_and_beyond_max_loras_they_wait(
        lora_sim: str) -> None:
    """max_loras 1: a request on a second adapter waits for the first's batch to end, and is
    listed in both labels meanwhile (vLLM 0.33 fills both for every adapter with requests)."""
    assert [labels for labels, _ in lora_series(lora_sim)] == [
        {"max_lora": "1", "waiting_lora_adapters": "", "running_lora_adapters": ""}]
    done: list[int] = []
    first = threading.Thread(target=lambda: done.append(ask(lora_sim, "sql", 40).status_code))
    first.start()
    wait_until(lambda: newest(lora_sim)["running_lora_adapters"] == "sql", what="sql listed")
    # Listed as soon as it is asked for; running once its adapter is loaded (30 ms).
    wait_until(lambda: loopback().get(f"{lora_sim}/sim/stats").json()["running"] == 1,
               what="sql running")
    second = threading.Thread(target=lambda: done.append(ask(lora_sim, "chat").status_code))
    second.start()
    wait_until(lambda: newest(lora_sim)["running_lora_adapters"] == "sql,chat",
               what="chat listed")
    assert newest(lora_sim) == {"max_lora": "1", "waiting_lora_adapters": "sql,chat",
                                "running_lora_adapters": "sql,chat"}
    stats = loopback().get(f"{lora_sim}/sim/stats").json()
    assert (stats["running"], stats["waiting"]) == (1, 1)
    first.join()
    second.join()
    assert done == [200, 200]
    assert newest(lora_sim)["running_lora_adapters"] == ""
    assert len(lora_series(lora_sim)) >= 3  # old combinations stay, as in vLLM
    # Each adapter was copied into the one GPU slot once; a second "chat" finds it there.
    assert ask(lora_sim, "chat").status_code == 200
    assert loopback().get(f"{lora_sim}/sim/stats").json()["lora_loads"] == 2


def test_no_lora_metric_without_lora_and_config_checks_name_the_field() -> None:
    with running_sim() as url:
        assert lora_series(url) == []
    with pytest.raises(ValueError, match="lora_modules"):
        SimConfig(lora_modules=("sql",))
    with pytest.raises(ValueError, match="runtime_lora_updating"):
        SimConfig(runtime_lora_updating=True)


def test_cli_flags_build_the_lora_config() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    config = config_from_args(parser.parse_args(
        ["--port", "9", "--max-loras", "4", "--lora-modules", "a=/p/a", "b",
         "--lora-load-ms", "50", "--allow-runtime-lora-updating"]))
    assert (config.max_loras, config.adapters(), config.lora_load_ms,
            config.runtime_lora_updating) == (4, {"a": "/p/a", "b": "/adapters/b"}, 50, True)
