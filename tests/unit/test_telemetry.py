"""PickerMetrics: valid Prometheus text, live per-worker state read from the registry."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.config import PickerConfig
from picker.errors import NoHealthyWorker
from picker.fleet.circuit import CircuitSettings, CircuitState
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import CONTENT_TYPE, PickerMetrics, match_bucket
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(metrics: PickerMetrics) -> tuple[dict[str, str], Samples]:
    """Family name -> type, and (sample name, sorted labels) -> value; fails on invalid text."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        assert family.name not in types, f"family {family.name} rendered twice"
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return types, samples


def in_flight(samples: Samples) -> dict[str, float]:
    return {dict(labels)["worker"]: value for (name, labels), value in samples.items()
            if name == "llm_picker_worker_in_flight"}


def registry(*ids: str) -> WorkerRegistry:
    return WorkerRegistry(WorkerSpec(url=f"h:{i + 1}", id=worker_id, models=["m"])
                          for i, worker_id in enumerate(ids))


def test_render_is_valid_prometheus_text_with_every_family() -> None:
    workers = registry("a", "b")
    metrics = PickerMetrics(workers)
    types, _ = parse(metrics)
    # prometheus_client adds `_created` series unless PROMETHEUS_DISABLE_CREATED_SERIES is set
    types = {name: kind for name, kind in types.items() if not name.endswith("_created")}
    assert types == {
        "llm_picker_requests": "counter",
        "llm_picker_rejections": "counter",
        "llm_picker_decisions": "counter",
        "llm_picker_model_rewrite_decisions": "counter",
        "llm_picker_spillovers": "counter",
        "llm_picker_routing_decisions": "counter",
        "llm_picker_decision_duration_seconds": "histogram",
        "llm_picker_load_imbalance": "counter",
        "llm_picker_tokenizer_fallbacks": "counter",
        "llm_picker_config_reloads": "counter",
        "llm_picker_pd_prefill_failures": "counter",
        "llm_picker_prefix_hits": "counter",
        "llm_picker_worker_ttft_seconds": "histogram",
        "llm_picker_worker_time_per_chunk_seconds": "histogram",
        "llm_picker_worker_tokens": "counter",
        "llm_picker_worker_in_flight": "gauge",
        "llm_picker_worker_healthy": "gauge",
        "llm_picker_worker_circuit_state": "gauge",
        "llm_picker_worker_prefill_tokens_per_second": "gauge",
        "llm_picker_worker_decode_step_seconds": "gauge",
    }
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_per_worker_in_flight_is_read_live_from_the_registry() -> None:
    workers = registry("a", "b")
    metrics = PickerMetrics(workers)
    assert in_flight(parse(metrics)[1]) == {"a": 0, "b": 0}
    a, b = workers.workers()
    for _ in range(3):
        workers.acquire(a)
    workers.acquire(b)
    assert in_flight(parse(metrics)[1]) == {"a": 3, "b": 1}
    workers.release(a)
    assert in_flight(parse(metrics)[1]) == {"a": 2, "b": 1}
    workers.add(WorkerSpec(url="h:9", id="c"))  # membership is followed too
    workers.remove(b.url)
    assert in_flight(parse(metrics)[1]) == {"a": 2, "c": 0}


def test_health_gauge_is_routability() -> None:
    workers = registry("ok", "sick", "leaving", "tripped")
    metrics = PickerMetrics(workers)
    _, sick, leaving, tripped = workers.workers()
    workers.set_healthy(sick, False)
    workers.set_draining(leaving)
    for _ in range(CircuitSettings().failure_threshold):
        workers.record_outcome(tripped, False)
    samples = parse(metrics)[1]
    healthy = {dict(labels)["worker"]: value for (name, labels), value in samples.items()
               if name == "llm_picker_worker_healthy"}
    assert healthy == {"ok": 1, "sick": 0, "leaving": 0, "tripped": 0}
    states = {(dict(labels)["worker"], dict(labels)["state"]): value
              for (name, labels), value in samples.items()
              if name == "llm_picker_worker_circuit_state"}
    for worker_id in ("ok", "sick", "leaving", "tripped"):  # exactly one state set per worker
        assert sum(states[(worker_id, s.value)] for s in CircuitState) == 1
    assert states[("tripped", "open")] == 1 and states[("ok", "closed")] == 1


def test_awkward_worker_ids_are_read_back() -> None:
    """Quotes, backslashes and line breaks never reach a label: WorkerSpec refuses such
    ids (test_workers.py); every character an id may hold survives the text format."""
    odd = "Pod_a.b-1:8000@3"
    workers = WorkerRegistry([WorkerSpec(url="h:1", id=odd)])
    workers.acquire(workers.workers()[0])
    assert in_flight(parse(PickerMetrics(workers))[1]) == {odd: 1}


def test_instances_do_not_share_a_registry() -> None:
    """No module-global state: two pickers in one process count separately."""
    first, second = PickerMetrics(registry("a")), PickerMetrics(registry("b"))
    first.requests.labels("completed").inc(5)
    assert parse(first)[1][("llm_picker_requests_total", (("outcome", "completed"),))] == 5
    assert ("llm_picker_requests_total", (("outcome", "completed"),)) not in parse(second)[1]
    assert set(in_flight(parse(second)[1])) == {"b"}


def test_no_secret_reaches_the_metrics() -> None:
    r = runtime(WorkerSpec(url="h:1", id="a", api_key="sk-METRICS-SECRET"), policy="least_load")
    r.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT)).release("completed")
    assert b"sk-METRICS-SECRET" not in r.metrics.render()


def test_router_wires_admission_gauges_and_success_ratio() -> None:
    r = runtime(WorkerSpec(url="h:1", id="a"), policy="least_load",
                limits={"max_concurrent_requests": 4})
    request = RoutingRequest(model="m", api=Api.CHAT)

    def gauge(name: str) -> float:
        return parse(r.metrics)[1][(name, ())]

    assert gauge("llm_picker_success_ratio") == 1.0  # nothing finished yet
    leases = [r.routing.route_sync(request) for _ in range(3)]
    assert gauge("llm_picker_active_requests") == 3
    assert gauge("llm_picker_utilization") == 0.75
    assert gauge("llm_picker_queued_requests") == 0
    leases[0].release("completed")
    leases[1].release("completed")
    leases[2].release("upstream_error")
    assert gauge("llm_picker_active_requests") == 0
    assert gauge("llm_picker_success_ratio") == pytest.approx(2 / 3)


def test_decisions_and_rejections_show_up_as_counters() -> None:
    r = runtime(WorkerSpec(url="h:1", id="a"))
    r.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT)).release("completed")
    r.routing.reject(NoHealthyWorker("none"))
    samples = parse(r.metrics)[1]
    assert samples[("llm_picker_decisions_total",
                    (("policy", "round_robin"), ("worker", "a")))] == 1
    assert samples[("llm_picker_rejections_total", (("code", "no_healthy_worker"),))] == 1
    assert samples[("llm_picker_requests_total", (("outcome", "rejected"),))] == 1
    assert samples[("llm_picker_requests_total", (("outcome", "completed"),))] == 1
    assert samples[("llm_picker_decision_duration_seconds_count", ())] == 1
    # buckets are fine enough for microsecond decisions
    assert ("llm_picker_decision_duration_seconds_bucket", (("le", "5e-06"),)) in samples


@pytest.mark.parametrize(
    ("rate", "bucket"),
    [(None, "none"), (0, "0"), (0.004, "0"), (0.006, "1-25"), (0.25, "1-25"), (0.26, "26-50"),
     (0.5, "26-50"), (0.51, "51-75"), (0.75, "51-75"), (0.76, "76-99"), (0.994, "76-99"),
     (1.0, "100"), (1.5, "100"), (-0.1, "0")],
)
def test_match_bucket(rate: float | None, bucket: str) -> None:
    assert match_bucket(rate) == bucket


def runtime(*specs: WorkerSpec, **settings: object) -> PickerRuntime:
    return PickerRuntime(PickerConfig.model_validate({"workers": list(specs), **settings}))


def test_learned_speed_and_index_sizing_are_exported_per_worker() -> None:
    from picker.fleet.engine_load import EngineCounter, EngineLoad
    from picker.fleet.speed import Observation
    from picker.prefix.approx import ApproxPrefixIndex
    from picker.prefix.calibration import Calibration
    from picker.prefix.index import PrefixIndex

    workers = registry("a")
    (a,) = workers.workers()
    workers.observe(a, Observation(prompt_tokens=1000, ttft_secs=0.1, output_tokens=3,
                                   decode_secs=0.02))
    calibration = Calibration(64, sees_tokens=False)
    for at, tokens in ((0.0, 0.0), (1.0, 4000.0)):
        workers.set_engine_load(a, EngineLoad(at, num_gpu_blocks=100, block_size=16,
                                              counters={EngineCounter.PROMPT_TOKENS: tokens}))
        calibration.recorded(a, 12000, 0)
    metrics = PickerMetrics(workers)
    index: PrefixIndex = ApproxPrefixIndex()
    metrics.watch_prefix_index(index, calibration)
    text = metrics.render().decode()
    assert 'llm_picker_worker_prefill_tokens_per_second{worker="a"} 10000.0' in text
    assert 'llm_picker_worker_decode_step_seconds{worker="a"} 0.01' in text
    assert 'llm_picker_prefix_units_per_token{worker="a"} 3.0' in text
    assert 'llm_picker_prefix_index_capacity_blocks{worker="a"} 82.0' in text
