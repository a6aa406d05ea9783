"""The core must not pull in any proxy: adapters depend on it, never the reverse.

Each module is imported in a fresh interpreter (this test process has long since imported the
adapters), and after each import the newly loaded proxy modules are charged to it, so a failure
names the module that brought them in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# The modules the design names as the core, in the order a reader meets them.
CORE = ["picker.fleet.worker_spec", "picker.fleet.registry", "picker.routing.request",
        "picker.errors", "picker.policies", "picker.routing.router", "picker.observe.metrics",
        "picker.config", "picker.admin.api", "picker.routing.openai_body"]
# Proxies, adapters, and the harness (simulator, benchmarks, the CLI that composes them).
FORBIDDEN = ("grpc", "envoy", "litellm", "extproc", "authz", "envoy_data_plane", "litellm_plugin",
             "picker_sim", "picker_bench", "llm_picker")

PROBE = """
import importlib, json, pkgutil, sys
import picker
forbidden = {forbidden!r}
wanted = {core!r}
wanted += sorted(m.name for m in pkgutil.walk_packages(picker.__path__, "picker.")
                 if m.name not in wanted)
charged, seen = {{}}, set()
for name in wanted:
    importlib.import_module(name)
    loaded = {{m for m in sys.modules if m.split(".")[0] in forbidden}}
    if loaded - seen:
        charged[name] = sorted(loaded - seen)
    seen |= loaded
print(json.dumps({{"imported": wanted, "charged": charged}}))
"""


def test_core_imports_no_proxy_module() -> None:
    core = [m for m in CORE
            if m != "picker.routing.openai_body" or Path("picker/routing/openai_body.py").exists()]
    code = PROBE.format(forbidden=FORBIDDEN, core=core)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(core) <= set(report["imported"])
    assert "picker.fleet.health" in report["imported"]  # the walk found the rest of the package
    assert report["charged"] == {}


def test_kv_event_sync_off_loads_none_of_it() -> None:
    """prefix.index approximate (the default): the KV-event modules, pyzmq and msgspec stay
    out of the process."""
    code = """
import sys
from picker.config import load_config
from picker.runtime import PickerRuntime
PickerRuntime(load_config(overrides={"prefix.enabled": True, "policy.name": "prefix_cache"}))
print(sorted(m for m in sys.modules if m.startswith(("picker.prefix.kv_", "zmq", "msgspec"))
             and m != "picker.prefix.kv_settings"))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_default_tokenizer_loads_no_hf_library() -> None:
    """jinja2 and tokenizers are the `hf` extra: without prefix.tokenizer.kind hf the picker
    runs without them installed."""
    code = """
import sys
from picker.config import load_config
from picker.runtime import PickerRuntime
PickerRuntime(load_config(overrides={"prefix.enabled": True, "policy.name": "prefix_cache"}))
print(sorted(m for m in sys.modules if m.startswith(("jinja2", "tokenizers", "picker.tokens"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
