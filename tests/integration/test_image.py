"""The container image (deploy/image/Dockerfile), as `make image` builds it: its configuration,
`llm-picker --version` in it, and the picker in it started exactly as the Gateway API
Inference Extension's inferencepool chart starts it (tests/integration/gie.py), answering
through real Envoy - non-root, root filesystem read-only, /tmp a tmpfs, as in deploy/.

Runs when LLM_PICKER_IMAGE names a built image: `make image-test` (CI) builds and sets it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess

import pytest

from tests.gie_chart import EXT_PROC_PORT, HEALTH_PORT, METRICS_PORT, probe_services, with_values
from tests.integration.conftest import wait_until

pytest.importorskip("kubernetes_asyncio")
from tests.integration.gie import PODMAN_RUN, chart_picker, routed_through_envoy  # noqa: E402

IMAGE = os.environ.get("LLM_PICKER_IMAGE", "")
pytestmark = pytest.mark.skipif(not IMAGE, reason="no LLM_PICKER_IMAGE: `make image-test` "
                                                  "builds the image and runs these")


def test_image_config_non_root_entrypoint_ports() -> None:
    """Read from the image in local storage by skopeo, not by the tool that built it."""
    shown = subprocess.run(["skopeo", "inspect", "--config", f"containers-storage:{IMAGE}"],
                           capture_output=True, text=True, check=True).stdout
    config = json.loads(shown)["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["llm-picker"]
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in (EXT_PROC_PORT, HEALTH_PORT,
                                                                 METRICS_PORT)}


def test_version_in_the_container() -> None:
    done = subprocess.run([*PODMAN_RUN, "--rm", "--read-only", IMAGE, "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"llm-picker {importlib.metadata.version('llm-picker')}"


def test_the_image_runs_the_compiled_prefix_loops() -> None:
    """The wheel `make image` installs was built with the host's compiler for the image's
    Python (both 3.11): the picker in the image uses picker/prefix/_native.c, not the fallback."""
    done = subprocess.run([*PODMAN_RUN, "--rm", "--read-only", "--entrypoint", "python", IMAGE,
                           "-c", "from picker.prefix import native; print(native.IMPLEMENTATION)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "c"


def test_chart_invocation_in_the_container_routes_through_envoy() -> None:
    values = with_values()
    _, readiness = probe_services(values)
    with chart_picker(values, image=IMAGE) as picker:
        wait_until(lambda: picker.serving(readiness), 60, "the picker in the container")
        assert routed_through_envoy(picker) <= {"sim-a", "sim-b"}
