"""The core must not pull in any proxy: adapters depend on it, never the reverse."""

from __future__ import annotations

import subprocess
import sys

CORE = ["picker.workers", "picker.registry", "picker.request", "picker.errors",
        "picker.policies", "picker.router", "picker.telemetry", "picker.config",
        "picker.admin", "picker.openai_body", "picker.health", "picker.sim", "picker.cli"]


def test_core_imports_no_proxy_module() -> None:
    code = (
        f"import sys\nfor m in {CORE!r}: __import__(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'envoy', 'litellm', 'extproc', 'envoy_data_plane')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
