"""`llm-picker serve --workers N`: N processes acting as one picker.

The supervisor makes the group's directory (shared in-flight table, registry-feed socket,
prometheus_client multiprocess files), starts N copies of the same `serve` command, each told
its place through LLM_PICKER_PROCESS_GROUP, and forwards SIGTERM/SIGINT to them (SIGHUP, the
config reload, to process 0, which follows the file). Process i
serves Envoy on extproc.port + i (and, in authz mode, checks on --authz-port + i): an HTTP/2
connection carries every ext_proc stream of an Envoy worker thread, so one shared port
(SO_REUSEPORT) would pin whole connections to one process, while N endpoints in Envoy's
cluster spread the streams (`llm-picker envoy-config --workers N` writes them). Process 0
also runs the admin API and everything that changes the fleet. If any process exits on its
own, the others are stopped too and the supervisor exits non-zero, so a process manager
(systemd, Kubernetes) restarts the whole picker.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from picker.config import GROUP_ENV, PickerConfig
from picker.listen import check_free
from picker.processes.backlog import SharedBacklog
from picker.processes.counts import SharedCounts
from picker.processes.group import ProcessGroup
from picker.routing.flow.quota_table import QuotaTable

__all__ = ["run_group"]

log = logging.getLogger("llm_picker")

_POLL_SECS = 0.1
_PR_SET_PDEATHSIG = 1
# The group's directory in the temporary directory, and the file its processes hold locked.
_GROUP_PREFIX = "llm-picker-group-"
_LOCK_FILE = "lock"
# A Unix socket's path holds at most 107 bytes (sun_path, NUL-terminated).
_SOCKET_PATH_MAX = 107
# Beyond the configured drain, how long a stopping process may take before it is killed.
_STOP_MARGIN_SECS = 10.0


def run_group(config: PickerConfig, count: int, serve_argv: Sequence[str],
              authz_port: int | None = None) -> int:
    """Run `count` processes of `llm-picker <serve_argv>` until signalled or one exits;
    `authz_port`: they serve `--mode authz`, checks on authz_port + i."""
    host, base = config.extproc.host, config.extproc.port
    for index in range(count):
        check_free(host, base + index, f"ext_proc (process {index})")
        if authz_port is not None:
            check_free(host, authz_port + index, f"authz HTTP (process {index})")
    if config.admin.enabled is not False:
        check_free(config.admin.host, config.admin.port, "the admin API")
    groups = _groups_base()
    _remove_orphaned_groups(groups)
    directory = Path(tempfile.mkdtemp(prefix=_GROUP_PREFIX, dir=groups))
    group = _Group()  # signals are handled from here on, before any child exists
    try:
        lock = _hold_lock(directory)
        SharedCounts.create(directory / "in_flight", count)
        QuotaTable.create(directory / "quotas", count)
        SharedBacklog.create(directory / "prefill_backlog", count)
        (directory / "metrics").mkdir()
        ports = _free_loopback_ports(count)
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory / "metrics")
        if env.get("PYTHONHASHSEED", "random") == "random":
            # Block hashes are Python's salted string hash: every process must agree.
            env["PYTHONHASHSEED"] = str(secrets.randbelow(2**32))
        supervisor = os.getpid()
        for index in range(count):
            if group.stopping:
                break
            place = ProcessGroup(index, count, directory, ports)
            group.children.append(subprocess.Popen(
                [sys.executable, "-m", "llm_picker", *serve_argv],
                env={**env, GROUP_ENV: place.to_env()}, pass_fds=(lock,),
                preexec_fn=lambda: _child_setup(supervisor)))
        log.info("llm-picker: %d processes, ext_proc on %s:%d-%d, admin API in process 0",
                 count, host, base, base + count - 1)
        return group.supervise(config.limits.shutdown_grace_secs
                               + config.limits.shutdown_delay_secs + _STOP_MARGIN_SECS)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _groups_base() -> Path:
    """Where group directories go: the temporary directory, or /tmp when the registry feed's
    socket would not fit under it (macOS's /var/folders/..., a CI workspace as TMPDIR)."""
    base = Path(tempfile.gettempdir())
    longest = ProcessGroup(0, 1, base / f"{_GROUP_PREFIX}{'x' * 8}", ()).feed_path
    return base if len(os.fsencode(longest)) <= _SOCKET_PATH_MAX else Path("/tmp")


def _hold_lock(directory: Path) -> int:
    """Lock the group's directory for as long as any process of the group lives: the returned
    descriptor is kept open here and inherited by every child (flock locks belong to the open
    file, shared by all its descriptors). The file is locked under a temporary name and then
    renamed, so no other supervisor ever finds it unlocked while this group is starting."""
    staging = directory / f".{_LOCK_FILE}"
    lock = os.open(staging, os.O_CREAT | os.O_WRONLY, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    staging.rename(directory / _LOCK_FILE)
    return lock


def _remove_orphaned_groups(base: Path) -> None:
    """Remove the directories of groups whose every process is gone: a supervisor killed
    (SIGKILL, OOM) before it could remove its own leaves its files behind. Whether one is gone
    is its lock, not a pid: a restarted container's supervisor is pid 1 again, and another pid
    namespace sharing /tmp has pids of its own. A directory without a lock file yet is a group
    being created, and is left."""
    for directory in base.glob(f"{_GROUP_PREFIX}*"):
        try:
            lock = os.open(directory / _LOCK_FILE, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: the group lives
        else:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(lock)


class _Group:
    """The children and what the supervisor's signals do to them."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self._forwarded: int | None = None  # the stop signal passed on to the children
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGHUP, self._reload)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        self._forwarded = signum
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def _reload(self, signum: int, _frame: FrameType | None) -> None:
        if self.children and self.children[0].poll() is None:
            self.children[0].send_signal(signum)  # process 0 follows the config file

    def supervise(self, stop_secs: float) -> int:
        """Until signalled or a child exits on its own; then stop them all (SIGKILL after
        `stop_secs`). Non-zero if a child failed or exited unasked."""
        children = self.children
        while not self.stopping and all(child.poll() is None for child in children):
            time.sleep(_POLL_SECS)
        crashed = not self.stopping
        if crashed:
            for index, child in enumerate(children):
                if child.returncode is not None:
                    print(f"llm-picker: process {index} exited with code {child.returncode}; "
                          "stopping the others", file=sys.stderr)
            self._forward(signal.SIGTERM, None)
        deadline = time.monotonic() + stop_secs
        for child in children:
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        # A child still starting when the stop came dies of the signal itself (its handler
        # not yet installed): asked to stop, that is a clean stop, not a failure.
        clean = (0, None if crashed or self._forwarded is None else -self._forwarded)
        return 1 if crashed or any(child.returncode not in clean for child in children) else 0


def _child_setup(supervisor: int) -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, even by SIGKILL, so no
    process of the group outlives it (Linux prctl PR_SET_PDEATHSIG; if the supervisor died
    just before, exit now). SIGHUP is ignored until process 0's config reload takes it
    (followers keep ignoring it): a hangup must not kill a process of the group."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        os._exit(1)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _free_loopback_ports(count: int) -> tuple[int, ...]:
    """Ports the kernel calls free now, for the processes' pick sharing (they bind them a
    moment later; a clash is a start-up error naming the port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return tuple(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
