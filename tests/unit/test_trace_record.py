"""Trace recording: no prompt text in a line, keyed hashes, rotation within bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.config import config_from_data
from picker.errors import ConfigError
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.processes.group import ProcessGroup
from picker.routing.admission import LimitSettings
from picker.routing.leases import LeaseBook
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.response_stats import ResponseSample, Usage
from picker.routing.router import Choice
from picker.runtime import PickerRuntime
from picker.trace.files import RotatingLines
from picker.trace.hashing import TraceHasher
from picker.trace.line import parse_line
from picker.trace.recorder import TraceRecorder
from picker.trace.settings import TraceSettings


def _record(path: Path, prompt: str, session: str | None, hasher: TraceHasher | None = None,
            tokens: list[int] | None = None) -> str:
    """One request through a lease book watched by a recorder; the line it wrote."""
    registry = WorkerRegistry()
    worker = registry.add(WorkerSpec(url="http://10.0.0.1:8000", id="w1"))
    recorder = TraceRecorder(TraceSettings(path=path), hasher)
    book = LeaseBook(registry, LimitSettings(), PickerMetrics(registry), (recorder,))
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text=prompt, session_key=session,
                             tokens=tokens, body={"max_tokens": 7})
    book.admit_now()
    lease = book.open(Choice(worker, "round_robin", 0.5, None, 10.0), request=request)
    lease.release("completed", ResponseSample(0.01, 0.001, 3, Usage(12, 3, 4)))
    recorder.close()
    return path.read_text().splitlines()[-1]


_TEXT = st.text(min_size=1, max_size=400)


@settings(max_examples=60, deadline=None)
@given(prompt=_TEXT, session=st.one_of(st.none(), st.text(min_size=1, max_size=40)))
def test_a_recorded_line_holds_no_prompt_text(tmp_path_factory: pytest.TempPathFactory,
                                              prompt: str, session: str | None) -> None:
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    data = json.loads(_record(path, prompt, session))
    # Strings are only what the picker chose (names, ids, a 16-hex keyed session label);
    # everything else is a number or the block hashes, integers.
    label = {} if session is None else {"session": data["session"]}
    assert {k: v for k, v in data.items() if isinstance(v, str)} == {
        "model": "m", "api": "/v1/chat/completions", "outcome": "completed", "worker": "w1",
        "policy": "round_robin", **label}
    assert session is None or (len(data["session"]) == 16 and data["session"] != session)
    assert all(isinstance(v, (int, float)) for k, v in data.items()
               if not isinstance(v, str) and k != "hash_ids")
    assert all(isinstance(h, int) for h in data["hash_ids"])


def test_blocks_are_keyed_per_trace_and_chained(tmp_path: Path) -> None:
    prompt = "the quick brown fox " * 40  # 800 characters: 12 blocks of 64
    one = TraceHasher(16, key=b"k1")
    same = TraceHasher(16, key=b"k1").blocks(None, prompt)
    assert one.blocks(None, prompt) == same and len(same) == 12
    # A shared prefix shares its leading ids, and only those.
    other = one.blocks(None, prompt[:300] + "x" + prompt[301:])
    assert other[:4] == same[:4] and not set(other[4:]) & set(same)
    # Another trace's key joins nothing.
    assert not set(TraceHasher(16, key=b"k2").blocks(None, prompt)) & set(same)
    tokens = list(range(40))
    assert len(one.blocks(tokens, "")) == 2


def test_a_line_carries_decision_prediction_and_outcome(tmp_path: Path) -> None:
    line = parse_line(_record(tmp_path / "t.jsonl", "hello " * 50, "user-1"), "t")
    assert (line.input_length, line.output_length, line.cached_tokens) == (12, 3, 4)
    assert (line.worker, line.policy, line.predicted_hit, line.max_tokens) == \
        ("w1", "round_robin", 0.5, 7)
    assert line.ttft_ms == 10.0 and line.latency_ms is not None and line.block_size == 16
    assert len(line.hash_ids) == 300 // 64 and line.session and len(line.session) == 16


def test_files_rotate_and_stay_bounded(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = RotatingLines(path, max_bytes=1000, backups=2)
    for i in range(100):
        lines.write(json.dumps({"i": i, "pad": "x" * 80}))
    lines.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
    assert all((tmp_path / f).stat().st_size <= 1000 for f in files)
    newest = [json.loads(x)["i"] for x in path.read_text().splitlines()]
    assert newest[-1] == 99
    older = [json.loads(x)["i"] for x in (tmp_path / "t.jsonl.1").read_text().splitlines()]
    assert older[-1] + 1 == newest[0]


@pytest.mark.parametrize(("trace", "key"), [
    ({"path": "t.jsonl", "sample_rate": 0}, "trace.sample_rate"),
    ({"path": "t.jsonl", "max_bytes": 100}, "trace.max_bytes"),
    ({"sample_rate": 0.5}, "trace.path"),
])
def test_bad_trace_settings_are_refused_naming_the_key(trace: dict[str, object],
                                                       key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_data({"trace": trace})


def test_serve_workers_refuses_a_recording_naming_trace(tmp_path: Path) -> None:
    """N processes would write N traces under N keys, none joinable with another."""
    config = config_from_data({"trace": {"path": str(tmp_path / "t.jsonl")}})
    with pytest.raises(ConfigError, match=r"^trace: serve --workers"):
        PickerRuntime(config, group=ProcessGroup(0, 2, tmp_path, (1, 2)))


def test_a_trace_path_that_cannot_be_written_stops_the_start_naming_it(tmp_path: Path) -> None:
    config = config_from_data({"trace": {"path": str(tmp_path / "missing" / "t.jsonl")}}, {})
    with pytest.raises(ConfigError, match=r"trace\.path: cannot write .*missing/t\.jsonl"):
        PickerRuntime(config)


def test_a_failing_write_loses_the_line_not_the_requests_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk or a removed directory after start-up: the request still ends, counted, and
    every other end hook runs; the failure is said once, until a write succeeds again."""
    registry = WorkerRegistry()
    worker = registry.add(WorkerSpec(url="http://10.0.0.1:8000", id="w1"))
    recorder = TraceRecorder(TraceSettings(path=tmp_path / "t.jsonl"))
    metrics = PickerMetrics(registry)
    ended: list[str] = []

    class _After:
        needs_answer = False

        def opened(self, choice: Choice, request: RoutingRequest,
                   predicted: object) -> object:
            return lambda lease, outcome, answer: ended.append(outcome)

    book = LeaseBook(registry, LimitSettings(), metrics, (recorder, _After()))  # type: ignore[arg-type]

    def serve() -> None:
        book.admit_now()
        book.open(Choice(worker, "round_robin", None, None, 10.0),
                  request=RoutingRequest(model="m", api=Api.CHAT)).release(Outcome.COMPLETED)

    def full(line: str) -> None:
        raise OSError(28, "No space left on device")

    working = recorder._lines.write
    recorder._lines.write = full  # type: ignore[method-assign]
    for _ in range(3):
        serve()
    assert ended == ["completed"] * 3
    assert metrics.registry.get_sample_value(
        "llm_picker_requests_total", {"outcome": "completed"}) == 3
    said = [r.getMessage() for r in caplog.records if "trace recording" in r.getMessage()]
    assert len(said) == 1 and "No space left on device" in said[0]
    recorder._lines.write = working  # type: ignore[method-assign]
    serve()
    recorder.close()
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1


def test_an_end_hook_that_raises_costs_neither_the_others_nor_the_count() -> None:
    registry = WorkerRegistry()
    worker = registry.add(WorkerSpec(url="http://10.0.0.1:8000", id="w1"))
    metrics = PickerMetrics(registry)
    ended: list[str] = []

    class _Hook:
        needs_answer = False

        def __init__(self, fails: bool) -> None:
            self.fails = fails

        def opened(self, choice: Choice, request: RoutingRequest, predicted: object) -> object:
            def end(lease: object, outcome: str, answer: object) -> None:
                if self.fails:
                    raise RuntimeError("a watcher's bug")
                ended.append(outcome)
            return end

    book = LeaseBook(registry, LimitSettings(), metrics,
                     (_Hook(True), _Hook(False)))  # type: ignore[arg-type]
    book.admit_now()
    book.open(Choice(worker, "round_robin", None, None, 10.0),
              request=RoutingRequest(model="m", api=Api.CHAT)).release(Outcome.COMPLETED)
    assert ended == ["completed"] and worker.in_flight == 0
    assert metrics.registry.get_sample_value(
        "llm_picker_requests_total", {"outcome": "completed"}) == 1
