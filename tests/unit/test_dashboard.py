"""deploy/grafana/llm-picker.json queries only metrics the picker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from picker.config import PickerConfig
from picker.errors import Overloaded
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "llm-picker.json"
METRIC = re.compile(r"\bllm_picker_[a-z0-9_]+")


def exported_samples() -> set[str]:
    """Sample names of a picker with every optional family on (prefix index, admission),
    after routed, refused and finished requests."""
    r = PickerRuntime(PickerConfig.model_validate({
        "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]}
                    for i in range(2)],
        "policy": "prefix_cache", "prefix": {"enabled": True},
        "limits": {"max_concurrent_requests": 8}}))
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="shared system prompt " * 20)
    r.routing.route_sync(request).release("completed")
    r.routing.route_sync(request).release("completed")
    r.metrics.tokenizer_fallbacks.inc(0)
    r.routing.reject(Overloaded("full", retry_after=1))
    text = r.metrics.render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(queried) >= 15, queried  # the dashboard covers the picker's families
    missing = queried - exported_samples()
    assert not missing, f"the dashboard queries metrics the picker does not export: {missing}"


def test_a_fresh_picker_exports_config_reloads_at_zero() -> None:
    """Grafana's increase() needs a sample before the first reload to show it."""
    text = PickerRuntime(PickerConfig()).metrics.render().decode()
    assert 'llm_picker_config_reloads_total{result="applied"} 0.0' in text
    assert 'llm_picker_config_reloads_total{result="rejected"} 0.0' in text


def test_every_query_follows_the_job_and_instance_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"job", "instance"}
    assert "$job" in variables["instance"]["query"]["query"]  # instances of the chosen jobs
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            selectors = re.findall(r"llm_picker_[a-z0-9_]+(\{[^}]*\})?", target["expr"])
            assert selectors and all('job=~"$job", instance=~"$instance"' in s
                                     for s in selectors), (panel["title"], target["expr"])
