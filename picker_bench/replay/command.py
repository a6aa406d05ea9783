"""`llm-picker replay` and `llm-picker trace import`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from picker.errors import ConfigError
from picker.trace.line import TraceLine, parse_line

__all__ = ["add_replay_parser", "add_trace_parser", "read_lines"]


def read_lines(path: Path, limit: int | None = None) -> list[TraceLine]:
    """A trace file's first `limit` lines (all with None); ValueError names line and field."""
    lines: list[TraceLine] = []
    with path.open(encoding="utf-8") as text:
        for number, line in enumerate(text, 1):
            if limit is not None and len(lines) >= limit:
                break
            if line.strip():
                lines.append(parse_line(line, f"{path}:{number}"))
    if not lines:
        raise ValueError(f"{path}: no trace lines")
    return sorted(lines, key=lambda line: line.timestamp)


def add_replay_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from picker_sim.engine import PROFILES

    replay = commands.add_parser(
        "replay", help="replay a trace through policies against simulated engines, in "
                       "virtual time (or fit the simulator to it: --calibrate)")
    replay.add_argument("trace", type=Path, help="trace JSONL (recorded, imported or Mooncake)")
    replay.add_argument("--policies", default="round_robin,least_load,cache_aware",
                        help="comma-separated policy names, each with its parameters from "
                             "--config (policies:, as serve reads them)")
    replay.add_argument("--config", help="picker YAML (policies, prefix, load, limits)")
    replay.add_argument("--engines", type=_positive, default=4)
    replay.add_argument("--profile", choices=sorted(PROFILES), default="8b-h100-tokens")
    replay.add_argument("--speedup", type=float, default=1.0,
                        help="arrivals compressed by this factor (2: twice the rate)")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--limit", type=_positive, help="replay only the first N lines")
    replay.add_argument("--plot", type=Path, help="write the comparison as SVG here")
    replay.add_argument("--record", type=Path,
                        help="write the first policy's replayed requests as a trace (with "
                             "TTFT and latency observed in the simulation)")
    replay.add_argument("--calibrate", action="store_true",
                        help="fit each engine's prefill rate and decode step to the trace's "
                             "observed TTFT and latency instead of replaying")
    replay.set_defaults(run=_replay)


def add_trace_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from picker_bench.replay.importers import FORMATS

    trace = commands.add_parser("trace", help="trace files for `replay`")
    which = trace.add_subparsers(dest="trace_command", required=True)
    imported = which.add_parser("import", help="convert a public trace format to a trace")
    imported.add_argument("source", type=Path)
    imported.add_argument("--format", choices=FORMATS, required=True)
    imported.add_argument("-o", "--output", type=Path, required=True)
    imported.set_defaults(run=_import)


def _import(ns: argparse.Namespace) -> int:
    from picker_bench.replay.importers import import_trace

    count = 0
    try:
        with ns.output.open("w", encoding="utf-8") as out:
            for line in import_trace(ns.source, ns.format):
                out.write(line.to_json() + "\n")
                count += 1
    except (OSError, ValueError) as exc:
        print(f"llm-picker trace import: {exc}", file=sys.stderr)
        return 2
    print(f"{count} requests written to {ns.output}")
    return 0


def _replay(ns: argparse.Namespace) -> int:
    from picker.config import load_config
    from picker_bench.replay.calibrate import calibrate, format_fits
    from picker_bench.replay.fleet import SimulatedFleet, as_trace, replay_policy
    from picker_bench.replay.report import (
        PolicyReport,
        format_table,
        oracle_hit_rate,
        plot_svg,
        summarise,
    )
    from picker_sim.engine import SimConfig

    try:
        lines = read_lines(ns.trace, ns.limit)
        if ns.calibrate:
            print(format_fits(calibrate(lines)))
            return 0
        if ns.speedup <= 0:
            raise ValueError(f"--speedup must be more than 0, not {ns.speedup}")
        config = load_config(ns.config)
        policies = [p.strip() for p in ns.policies.split(",") if p.strip()]
        if not policies:
            raise ValueError("--policies names no policy")
        fleet = SimulatedFleet(config, SimConfig.from_profile(ns.profile), ns.engines, ns.speedup,
                      ns.seed)
        reports: list[PolicyReport] = []
        for policy in policies:
            started = time.process_time()
            served = replay_policy(lines, policy, fleet)
            cpu = time.process_time() - started
            print(f"{policy}: {len(lines)} requests in {cpu:.1f} s of CPU "
                  f"({len(lines) / cpu if cpu else 0:.0f} requests/s)", file=sys.stderr)
            if ns.record is not None and not reports:
                ns.record.write_text("".join(line.to_json() + "\n"
                                             for line in as_trace(lines, served, policy)))
            reports.append(summarise(policy, served, ns.engines))
    except (ConfigError, OSError, ValueError) as exc:
        print(f"llm-picker replay: {exc}", file=sys.stderr)
        return 2
    oracle = oracle_hit_rate(lines, fleet.engine.block_tokens)
    print(format_table(reports, oracle))
    if ns.plot is not None:
        try:
            ns.plot.write_text(plot_svg(f"{ns.trace.name}, {ns.engines} x {ns.profile}",
                                        reports, oracle))
        except OSError as exc:
            print(f"llm-picker replay: --plot: cannot write {ns.plot}: {exc.strerror}",
                  file=sys.stderr)
            return 2
    return 0


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number
