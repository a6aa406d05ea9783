"""A fork server for `llm-picker serve` and `llm-picker sim`, and for the LiteLLM proxy: the
suite's start-up cost, cut.

The suite starts ~600 simulated engines and ~360 pickers; a fresh interpreter spends most of a
second of CPU importing the picker (pydantic models, FastAPI, grpc) before it serves, so on two
cores the imports alone were minutes of every run. This server imports those modules once, then
forks a child per start that runs `llm_picker.cli.main(argv)` as the console script would, with
the requested environment, working directory and log file, a fresh random seed, and the same
exit path (atexit handlers, exit status, signals). What a fork cannot change, what was read of
the environment before it (the interpreter's own start-up settings: the hash seed, PYTHON*
variables), is the server's: a start asking for other values gets a fresh interpreter
(`ForkServer.runs_alike`). It is how a preloading server (gunicorn's `--preload`) starts
workers. The LiteLLM proxy (`litellm --config ...`) is a second `Program`: its import took ~9 s
of CPU per start, and LiteLLM itself preloads its app and forks workers under gunicorn
(litellm/proxy/proxy_cli.py, run_gunicorn_server). It reads its environment as it imports, so a
proxy start is forked only when all its environment is the server's but the picker's settings
(LLM_PICKER_*, read when the proxy starts) and pytest's name for the running test. What its
imports add to the environment (LiteLLM loads a `.env` file) each child gets too, where its own
environment names nothing else, as `load_dotenv` does in a fresh process.

Used by picker_bench.stack.spawn when `PICKER_BENCH_FORK_SERVER=1` (tests/conftest.py sets it;
`PICKER_BENCH_FORK_SERVER=0 make test` runs every start as a fresh interpreter), one server per
program, started on its first use. A server must stay single-threaded until it forks: nothing
it imports may start a thread or gRPC's core (checked at start).

`python -m picker_bench.forkserver PROGRAM`. Protocol, one JSON object per line: requests on
stdin `{"argv", "env", "cwd", "log"}`, answers on stdout `{"pid"}`. A child's exit status is
written to `<log>.<pid>.exit` (the waitpid code as `Popen.returncode` gives it) when the server
reaps it. On end of input (the harness went away) or a failure of its own, the server kills its
remaining children.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["HASH_SEED", "LITELLM", "PICKER", "ForkedChild", "ForkServer", "Program"]

# What `serve` (ext_proc and authz) and `sim` (HTTP and gRPC) import before they serve, and what
# they import as they start (the event loop, the HTTP client's transport, FastAPI's checks).
_PRELOAD = ("llm_picker.cli", "llm_picker.serve_extproc", "llm_picker.serve_authz",
            "llm_picker.logs", "llm_picker.ports", "llm_picker.allocator", "llm_picker.tracing",
            "picker.config", "picker_sim", "picker_sim.grpc_server",
            "picker_bench.replay.command", "uvloop", "httpcore", "h2.connection", "certifi",
            "anyio._backends._asyncio", "pydantic.v1", "uvicorn.lifespan.off")


# Replicas sharing picks need one hash seed (picker_bench.stack.REPLICA_ENV has this one): the
# picker's server runs with it, unless the harness's environment names another, so that their
# starts are forked too.
HASH_SEED = "20240515"


def _interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    """What an interpreter reads of its environment as it starts (hash seed, warnings, dev
    mode, buffering, path...)."""
    return {key: value for key, value in env.items() if key.startswith("PYTHON")}


def _all_but_picker_settings(env: Mapping[str, str]) -> dict[str, str]:
    """LiteLLM reads its settings as it imports; the picker's plugin reads its own when the
    proxy starts. pytest names the running test in PYTEST_CURRENT_TEST, which the litellm
    package never reads (no mention of it in litellm/ 1.106)."""
    return {key: value for key, value in env.items()
            if not key.startswith("LLM_PICKER_") and key != "PYTEST_CURRENT_TEST"}


@dataclass(frozen=True)
class Program:
    """A command a server can become."""

    name: str  # the console script: the child's sys.argv[0]
    preload: tuple[str, ...]  # imported once, by the server
    entry: str  # "module:callable", called with the argument list; returns or exits the code
    # The server's environment where the harness's names nothing else: settings a child may
    # leave unnamed, as a fresh start would behave alike with or without them.
    defaults: Mapping[str, str]
    # The part of an environment the server has read by the time it forks: a start asking for
    # other values is not forked.
    read_before_fork: Callable[[Mapping[str, str]], dict[str, str]]


PICKER = Program("llm-picker", _PRELOAD, "llm_picker.cli:main", {"PYTHONHASHSEED": HASH_SEED},
                 _interpreter_settings)
# numpy's BLAS (imported by LiteLLM) would start its thread pool at import: one thread, none
# started (the proxy does no linear algebra).
LITELLM = Program("litellm", ("litellm.proxy.proxy_cli", "litellm.proxy.proxy_server"),
                  "litellm.proxy.proxy_cli:run_server", {"OPENBLAS_NUM_THREADS": "1"},
                  _all_but_picker_settings)
_PROGRAMS = {program.name: program for program in (PICKER, LITELLM)}


def exit_path(log: Path, pid: int) -> Path:
    """Where the server writes a child's exit status: beside its log, named by its pid, so a
    restart logging to the same file never reads its predecessor's."""
    return log.with_name(f"{log.name}.{pid}.exit")


def _child(program: Program, request: Mapping[str, Any], server_fds: Sequence[int],
           imported_env: Mapping[str, str]) -> None:
    """In the forked child: become the command, then exit as the interpreter would."""
    code = 1
    interrupted = False
    try:
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter's
        signal.set_wakeup_fd(-1)
        for fd in server_fds:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**imported_env, **request["env"]})
        random.seed()  # the server's state would make every child draw the same numbers
        argv: list[str] = request["argv"]
        sys.argv = [program.name, *argv]
        module, name = program.entry.split(":")
        result = getattr(importlib.import_module(module), name)(argv)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 - the child reports what killed it, as Python would
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        if interrupted:  # Python ends an uncaught KeyboardInterrupt by SIGINT itself
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _serve(program: Program) -> None:
    """The server's loop: fork on each request line, reap children as they exit."""
    before = dict(os.environ)
    for name in program.preload:
        importlib.import_module(name)
    imported_env = {key: value for key, value in os.environ.items() if key not in before}
    threads = os.listdir("/proc/self/task")  # native ones too (gRPC's core would show here)
    if len(threads) != 1:
        raise SystemExit(f"fork server: imports started threads: {threads}")
    # The imported modules' objects out of the collector's sight: each child's first full
    # collection would walk them all (~0.1 s) and copy the pages it touches (as gunicorn's
    # preload users do, the CPython docs' advice for gc.freeze before fork).
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the harness: it ends our input
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    logs: dict[int, str] = {}
    requests = sys.stdin.buffer
    answers = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=answers, flush=True)
    try:
        while True:
            readable, _, _ = select.select([requests, wake_read], [], [], 1.0)
            if wake_read in readable:
                os.read(wake_read, 512)
            _reap(logs)
            if requests not in readable:
                continue
            line = requests.readline()
            if not line:
                break
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(program, request, [wake_read, wake_write], imported_env)
            logs[pid] = request["log"]
            print(json.dumps({"pid": pid}), file=answers, flush=True)
    finally:  # end of input, or the server failing: no child outlives it
        for pid in logs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while logs and time.monotonic() < deadline:
            _reap(logs)
            time.sleep(0.01)


def _reap(logs: dict[int, str]) -> None:
    """Write each exited child's status, then reap it: its pid stays its own (a zombie) until
    the file exists, so the harness never signals a pid reused by another process."""
    while logs:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if exited is None:
            return
        pid = exited.si_pid
        status = exited.si_status if exited.si_code == os.CLD_EXITED else -exited.si_status
        log = logs.pop(pid, None)
        if log is not None:
            final = exit_path(Path(log), pid)
            temp = final.with_name(final.name + ".tmp")
            with contextlib.suppress(OSError):  # its directory may be gone: nobody waits then
                temp.write_text(str(status))
                temp.replace(final)
        os.waitpid(pid, 0)


class ForkedChild:
    """A child of the fork server, with the part of `subprocess.Popen`'s interface the harness
    and the tests use (its exit status arrives through the file the server writes)."""

    def __init__(self, pid: int, args: Sequence[str], log: Path) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._exit = exit_path(log, pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = int(self._exit.read_text())
            except (FileNotFoundError, ValueError):
                return None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # not reaped, so the pid is still this child's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The harness's side: one server per program and test process, started on first use,
    with `environment` (this process's by default; the program's defaults where it names
    nothing)."""

    def __init__(self, program: Program = PICKER,
                 environment: Mapping[str, str] | None = None) -> None:
        self.program = program
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._environment = {**program.defaults, **(os.environ if environment is None
                                                    else environment)}
        self._read = program.read_before_fork(self._environment)

    def runs_alike(self, env: Mapping[str, str]) -> bool:
        """Whether a child with environment `env` behaves as a fresh start would: what the
        server read before forking is what `env` says (a default left unnamed is fine: a fresh
        interpreter draws a random hash seed, any seed is one; BLAS threads are no behaviour)."""
        return self.program.read_before_fork({**self.program.defaults, **env}) == self._read

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            # Started where this package is, so that it imports the same checkout as the
            # harness whatever the harness's directory (a test may have changed it).
            process = subprocess.Popen(
                [sys.executable, "-m", "picker_bench.forkserver", self.program.name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self._environment,
                cwd=Path(__file__).resolve().parents[1])
            answers: IO[str] | None = process.stdout
            assert answers is not None
            ready = answers.readline()
            if not ready.startswith('{"ready"'):
                process.kill()
                raise RuntimeError(f"the fork server did not start ({ready!r}; see stderr)")
            self._process = process
            atexit.register(self._stop, process)
        return self._process

    @staticmethod
    def _stop(process: subprocess.Popen[str]) -> None:
        """End of input: the server kills the children still running, then exits."""
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> ForkedChild:
        """`argv` after the program's name, with exactly `env` as its environment (check
        `runs_alike` first). The log is truncated here, as a fresh start's is."""
        log.open("wb").close()
        with self._lock:
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps({"argv": list(argv), "env": dict(env),
                                            "cwd": os.getcwd(), "log": str(log)}) + "\n")
            process.stdin.flush()
            answer = process.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server stopped (see stderr)")
        return ForkedChild(json.loads(answer)["pid"], [self.program.name, *argv], log)


if __name__ == "__main__":
    _serve(_PROGRAMS[sys.argv[1]])
