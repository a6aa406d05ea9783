"""Replay: deterministic, Mooncake traces import and replay, calibration recovers the sim."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from llm_picker.cli import main
from picker.config import PickerConfig
from picker.trace.line import TraceLine
from picker_bench.mooncake import SAMPLE_TRACE
from picker_bench.replay.calibrate import calibrate
from picker_bench.replay.clock import VirtualTimeLoop
from picker_bench.replay.command import read_lines
from picker_bench.replay.fleet import SimulatedFleet, as_trace, replay_policy
from picker_bench.replay.importers import import_trace
from picker_bench.replay.report import oracle_hit_rate, summarise
from picker_sim.engine import SimConfig

_FLEET = SimulatedFleet(PickerConfig(), SimConfig.from_profile("8b-h100-tokens"), engines=4, seed=3)


def test_the_same_replay_twice_gives_identical_results() -> None:
    lines = read_lines(SAMPLE_TRACE)
    for policy in ("cache_aware", "power_of_two", "prefix_cache"):
        assert replay_policy(lines, policy, _FLEET) == replay_policy(lines, policy, _FLEET)


# What replays of the sample gave before the replay was made faster (main at 3a80228, before
# picker_sim.run_cache and the byte-wise texts): sha256 of repr(served), first 16 digits. The
# tight fleet fills its small caches with pinned prompts (stores cut short, runs evicted in
# part); the roomy one is the default profile.
_TIGHT = SimulatedFleet(PickerConfig(), SimConfig.from_profile(
    "8b-h100-tokens", cache_blocks=1500, max_concurrency=8), engines=3, speedup=20.0, seed=5)
_BEFORE = {
    ("roomy", "round_robin"): "5641492479cd520b", ("roomy", "power_of_two"): "eeb0ded901ef84f5",
    ("roomy", "cache_aware"): "26849cd13e6d5725", ("roomy", "prefix_cache"): "c11445d0ddebbe69",
    ("tight", "round_robin"): "9f09566b01898749", ("tight", "power_of_two"): "177fa113c90a9b5a",
    ("tight", "cache_aware"): "cef24df3e0520a4f", ("tight", "prefix_cache"): "90379a3c8728e1e1",
}


def test_a_replay_gives_what_it_gave_before_it_was_made_faster() -> None:
    lines = read_lines(SAMPLE_TRACE)
    fleets = {"roomy": _FLEET, "tight": _TIGHT}
    got = {(fleet, policy): hashlib.sha256(
               repr(replay_policy(lines, policy, fleets[fleet])).encode()).hexdigest()[:16]
           for fleet, policy in _BEFORE}
    assert got == _BEFORE


def test_a_mooncake_file_imports_and_replays(tmp_path: Path) -> None:
    lines = list(import_trace(SAMPLE_TRACE, "mooncake"))
    assert len(lines) == 240 and lines[0].block_size == 512
    served = replay_policy(lines, "cache_aware", _FLEET)
    report = summarise("cache_aware", served, 4)
    oracle = oracle_hit_rate(lines, 16)
    # The sample's conversations resend their history: a cache-aware fleet finds most of it.
    assert 0.3 < report.hit_rate <= oracle + 1e-9
    assert summarise("round_robin", replay_policy(lines, "round_robin", _FLEET), 4).hit_rate \
        < report.hit_rate


def test_a_bad_mooncake_line_is_refused_naming_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 600, "output_length": 1, '
                    '"hash_ids": [1]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'hash_ids' has 1 ids"):
        list(import_trace(path, "mooncake"))


def test_calibration_recovers_the_simulator_that_produced_a_trace() -> None:
    engine = SimConfig(ttft_ms=8.0, tpot_ms=4.0, prefill_tokens_per_sec=15_000.0,
                       cache_blocks=28_000, block_tokens=16)
    # One request every 5 s on 2 engines: no queueing, a batch of one (what the fit models).
    lines = [replace(line, timestamp=i * 5000.0)
             for i, line in enumerate(read_lines(SAMPLE_TRACE, 120))]
    fleet = SimulatedFleet(PickerConfig(), engine, engines=2, seed=1)
    recorded = as_trace(lines, replay_policy(lines, "round_robin", fleet), "round_robin")
    fits = calibrate(recorded)
    assert [f.worker for f in fits] == ["sim-0", "sim-1"]
    for fit in fits:
        assert fit.prefill_tokens_per_sec == pytest.approx(15_000, rel=0.1)
        assert fit.decode_step_ms == pytest.approx(4.0, rel=0.1)
        assert fit.fixed_ms == pytest.approx(8.0, rel=0.1)
        assert fit.ttft_error < 0.05


def test_calibration_without_observed_ttft_says_what_is_missing() -> None:
    with pytest.raises(ValueError, match="ttft_ms"):
        calibrate([TraceLine(0.0, 10, 1, ())])


def test_the_commands_import_replay_plot_and_calibrate(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    trace, svg, replayed = tmp_path / "t.jsonl", tmp_path / "r.svg", tmp_path / "replayed.jsonl"
    assert main(["trace", "import", str(SAMPLE_TRACE), "--format", "mooncake",
                 "-o", str(trace)]) == 0
    assert main(["replay", str(trace), "--policies", "round_robin,cache_aware", "--engines",
                 "3", "--limit", "60", "--plot", str(svg), "--record", str(replayed)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in table[-2:]] == ["round_robin", "cache_aware"]
    assert svg.read_text().startswith("<svg") and "cache_aware" in svg.read_text()
    assert main(["replay", str(replayed), "--calibrate"]) == 0
    assert [row.split()[0] for row in capsys.readouterr().out.splitlines()[1:]] == \
        ["sim-0", "sim-1", "sim-2"]


def test_a_plot_path_that_cannot_be_written_is_an_error_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(SAMPLE_TRACE), "--policies", "round_robin", "--limit", "20",
                 "--plot", str(tmp_path)]) == 2
    assert f"--plot: cannot write {tmp_path}" in capsys.readouterr().err


def test_an_unknown_policy_is_refused_naming_it(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(SAMPLE_TRACE), "--policies", "round_robin,fastest"]) == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err


def test_an_openai_jsonl_imports_with_shared_prefixes(tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    system = " ".join(f"s{i}" for i in range(64))
    source.write_text("\n".join(json.dumps(body) for body in (
        {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": "one"}]},
        {"timestamp": 1500, "body": {"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "two"}]}},
    )) + "\n")
    first, second = import_trace(source, "openai")
    assert (first.output_length, second.timestamp, second.output_length) == (5, 1500.0, 16)
    assert first.input_length == 67 and first.hash_ids[:4] == second.hash_ids[:4]
    assert "s1" not in first.to_json()
    source.write_text('{"body": {"messages": "hi"}}\n')
    with pytest.raises(ValueError, match=r"requests.jsonl:1: a request needs 'messages'"):
        list(import_trace(source, "openai"))


def test_policies_take_their_parameters_from_the_config_as_serve_reads_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cache_threshold 1.0: only a whole-prompt match counts as a hit, so follow-up turns
    (their history matched, their new turn not) go by load instead."""
    strict = tmp_path / "picker.yaml"
    strict.write_text("policies:\n  cache_aware:\n    cache_threshold: 1.0\n")

    def hit_rate(*config: str) -> float:
        assert main(["replay", str(SAMPLE_TRACE), "--policies", "cache_aware",
                     *config]) == 0
        return float(capsys.readouterr().out.splitlines()[-1].split()[3])

    assert hit_rate("--config", str(strict)) < hit_rate() - 0.1
    strict.write_text("policies:\n  cache_aware:\n    cache_threshold: 2\n")
    assert main(["replay", str(SAMPLE_TRACE), "--config", str(strict)]) == 2
    assert "policies.cache_aware.cache_threshold" in capsys.readouterr().err


def test_a_replay_is_the_same_in_another_process_with_another_hash_seed() -> None:
    """Python salts str hashes per process (the prefix index's seeds use them): a replay
    must not depend on it."""
    argv = [sys.executable, "-m", "llm_picker", "replay", str(SAMPLE_TRACE), "--policies",
            "cache_aware,prefix_cache,power_of_two", "--limit", "120"]
    tables = {subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
              for seed in ("1", "2")}
    assert len(tables) == 1 and "prefix_cache" in tables.pop()


def test_the_virtual_loops_sleep_wakes_tasks_as_asyncio_sleep_does() -> None:
    """Same delays (0, equal ones, tiny ones), same order of wake-ups at the same times."""
    delays = [0.0, 0.5, 0.5, 1e-9, 0.25, 0.0, 0.75, 0.5]

    def woken(sleep: Callable[[VirtualTimeLoop], Callable[[float], Awaitable[None]]]
              ) -> list[tuple[int, int, float]]:
        loop = VirtualTimeLoop()
        order: list[tuple[int, int, float]] = []

        async def sleeper(name: int) -> None:
            for turn, delay in enumerate(delays[name:] + delays[:name]):
                await sleep(loop)(delay)
                order.append((name, turn, loop.time()))

        async def main() -> None:
            await asyncio.gather(*(sleeper(name) for name in range(len(delays))))
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        return order

    assert woken(lambda loop: loop.sleep) == woken(lambda loop: asyncio.sleep)


def test_a_replay_runs_the_cyclic_collector_rarely_and_gives_it_back_as_it_was() -> None:
    """picker_bench.replay.fleet._rare_collections: the default thresholds collected 9
    times in a replay of the sample; the caller's thresholds and frozen objects afterwards."""
    lines = read_lines(SAMPLE_TRACE)
    collections: list[int] = []

    def heard(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    before = gc.get_threshold(), gc.get_freeze_count()
    gc.callbacks.append(heard)
    try:
        replay_policy(lines, "prefix_cache", _FLEET)
    finally:
        gc.callbacks.remove(heard)
    assert len(collections) <= 2, collections
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
