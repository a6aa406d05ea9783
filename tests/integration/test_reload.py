"""Configuration reload on a live picker: file change, SIGHUP, and a broken file."""

from __future__ import annotations

import signal
from collections import Counter

import yaml

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet, start_sim
from tests.integration.conftest import (
    FAST_HEALTH,
    MODEL,
    SIM_HEADER,
    metric_values,
    wait_until,
)


def served(fleet_url: str, n: int) -> Counter[str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    return Counter(
        loopback().post(f"{fleet_url}/v1/chat/completions", json=body,
                        timeout=10).headers[SIM_HEADER]
        for _ in range(n)
    )


def reloads(fleet_admin: object, result: str) -> float:
    return metric_values(fleet_admin, "llm_picker_config_reloads_total").get(  # type: ignore[arg-type]
        (("result", result),), 0.0)


def test_file_change_adds_and_removes_workers_and_a_broken_file_is_rejected() -> None:
    with local_fleet([SimSpec("a", MODEL)], policy="round_robin",
                     picker_settings=FAST_HEALTH) as fleet:
        path = fleet.workdir / "picker.yaml"
        config = yaml.safe_load(path.read_text())
        extra = SimSpec("b", MODEL)
        proc = start_sim(extra, fleet.workdir)
        try:
            config["workers"].append({"url": f"http://127.0.0.1:{extra.port}", "id": "b",
                                      "models": [MODEL]})
            path.write_text(yaml.safe_dump(config))
            wait_until(lambda: reloads(fleet, "applied") >= 1, what="reload applied")
            assert served(fleet.envoy_url, 6) == {"a": 3, "b": 3}

            path.write_text("workers: [{url: 'x:1', priority: high}]\n")
            fleet.processes["picker"].popen.send_signal(signal.SIGHUP)
            wait_until(lambda: reloads(fleet, "rejected") >= 1, what="broken file rejected")
            assert served(fleet.envoy_url, 4) == {"a": 2, "b": 2}
            assert "workers.0.priority" in fleet.processes["picker"].log_tail()

            config["workers"] = [w for w in config["workers"] if w["id"] != "a"]
            path.write_text(yaml.safe_dump(config))
            wait_until(lambda: set(served(fleet.envoy_url, 2)) == {"b"}, what="a drained")
            listed = loopback().get(f"{fleet.admin_url}/workers").json()
            assert [w["id"] for w in listed["workers"]] == ["b"]
        finally:
            proc.stop()
