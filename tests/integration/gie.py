"""A picker started the way the Gateway API Inference Extension's inferencepool chart starts its
endpoint picker, against the loopback Kubernetes API server holding the chart's InferencePool
(one pod serving two simulated engines on two target ports): as a local process, or in the
container image (`image`, run with podman as a kubelet would run it).

Ports and listen addresses move to free loopback ones through LLM_PICKER_* variables (which
the chart's inferenceExtension.env can set too); the chart's own 9002/9003/9090 are checked in
tests/unit/test_gie.py. A local process finds the ConfigMap in the test's directory rather than
/config (the only change to the args); the container gets it mounted at /config.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from picker_bench.loopback import loopback
from picker_bench.stack import (
    ENVOY_GATEWAY,
    Process,
    SimSpec,
    free_port,
    render_envoy_config,
    spawn,
    start_envoy,
    start_sims,
)
from tests.gie_chart import CONFIG_MOUNT, epp_args, plugins_config
from tests.integration.conftest import MODEL, SIM_HEADER
from tests.k8s_api import FakeKubeApi, pod, pool, serving_in_thread

__all__ = ["NAMESPACE", "PODMAN_RUN", "RELEASE", "ChartPicker", "chart_picker",
           "routed_through_envoy"]

RELEASE, NAMESPACE = "vllm-llama3-8b", "ns"  # FakeKubeApi's objects live in namespace ns
# crun refuses this machine's cgroups (v1 with a v2 hierarchy beside: "cgroups in hybrid mode
# not supported"), and its root lacks CAP_SYS_RESOURCE, so podman's default limits (1048576
# open files) cannot be set: runc, with limits under the host's.
PODMAN_RUN = ("podman", "--runtime", "runc", "run", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1024:1024")


@dataclass
class ChartPicker:
    process: Process
    extproc_port: int
    health_port: int
    metrics_port: int
    engine_ports: list[int]
    workdir: Path

    def serving(self, service: str) -> bool:
        """Whether the gRPC health `service` answers SERVING (False while not listening)."""
        if self.process.popen.poll() is not None:
            raise AssertionError(f"the picker exited:\n{self.process.log_tail()}")
        with contextlib.suppress(grpc.RpcError), \
                grpc.insecure_channel(f"127.0.0.1:{self.health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        return False


@contextlib.contextmanager
def chart_picker(values: dict[str, Any], image: str | None = None) -> Iterator[ChartPicker]:
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-gie-"))
    workdir.chmod(0o755)  # the image's user reads the ConfigMap and kubeconfig from here
    started: list[Process] = []
    api = FakeKubeApi()
    try:
        sims = [SimSpec(worker, MODEL, ["--ttft-ms", "2", "--tpot-ms", "1"])
                for worker in ("sim-a", "sim-b")]
        started += start_sims(sims, workdir)
        ports = [sim.port for sim in sims]
        with serving_in_thread(api) as loop:
            labels = {"app": RELEASE}
            for resource, obj in (("inferencepools", pool(RELEASE, labels, ports)),
                                  ("pods", pod("vllm-0", "127.0.0.1", labels))):
                asyncio.run_coroutine_threadsafe(api.put(resource, obj), loop).result(5)
            (workdir / "kubeconfig").write_text(api.kubeconfig())
            name, text = plugins_config(values)
            (workdir / name).write_text(text)
            args = epp_args(values, RELEASE, NAMESPACE)
            extproc, health, metrics = free_port(), free_port(), free_port()
            env = {"NAMESPACE": NAMESPACE,
                   "LLM_PICKER_EXTPROC__HOST": "127.0.0.1", "LLM_PICKER_ADMIN__HOST": "127.0.0.1",
                   "LLM_PICKER_EXTPROC__PORT": str(extproc),
                   "LLM_PICKER_EXTPROC__HEALTH_PORT": str(health),
                   "LLM_PICKER_ADMIN__PORT": str(metrics),
                   "LLM_PICKER_LIMITS__SHUTDOWN_DELAY_SECS": "0"}  # no balancer to wait for
            process = spawn("picker", _command(args, env, workdir, image), workdir,
                            None if image else {**env, "KUBECONFIG": str(workdir / "kubeconfig")})
            try:
                yield ChartPicker(process, extproc, health, metrics, ports, workdir)
            finally:  # before the API server goes: a picker that lost it logs errors
                process.stop(timeout=15)
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _command(args: Sequence[str], env: dict[str, str], workdir: Path,
             image: str | None) -> list[str]:
    """The picker's command line: the chart's args after the image's entrypoint."""
    if image is None:
        local = [a.replace(f"{CONFIG_MOUNT}/", f"{workdir}/") for a in args]
        return [sys.executable, "-m", "llm_picker", *local]
    variables = {**env, "KUBECONFIG": f"{CONFIG_MOUNT}/kubeconfig"}
    return [*PODMAN_RUN, "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--volume", f"{workdir}:{CONFIG_MOUNT}:ro",
            *[item for key, value in variables.items() for item in ("--env", f"{key}={value}")],
            image, *args]


def routed_through_envoy(picker: ChartPicker, requests: int = 6) -> set[str]:
    """Send chat requests through real Envoy configured as a gateway configures it (TLS to the
    picker, bodies streamed both ways); every one must succeed. The engines that served."""
    listen, admin = free_port(), free_port()
    envoy = start_envoy(render_envoy_config(
        listen_port=listen, admin_port=admin, picker_port=picker.extproc_port,
        body_mode="FULL_DUPLEX_STREAMED", template=ENVOY_GATEWAY,
        fallback_ports=picker.engine_ports), picker.workdir)
    served: set[str] = set()
    try:
        for i in range(requests):
            response = loopback().post(f"http://127.0.0.1:{listen}/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 2,
                "messages": [{"role": "user", "content": f"question {i}"}]}, timeout=10)
            assert response.status_code == 200, response.text
            served.add(response.headers[SIM_HEADER])
    finally:
        envoy.stop()
    return served
