"""How the suite spreads over pytest-xdist workers (`make test`: `-n 4 --dist loadgroup`).

Tests go to workers one by one, except those in one xdist group, which one worker runs:
- tests sharing a module-scoped fixture (a fleet of sims, the picker and Envoy; a built
  wheel), grouped by module: a worker would otherwise start that fixture again for each of
  them it got;
- `xdist_group("timing")`: tests that bound a wall-clock time under a second, so that at
  least they do not run beside each other;
- the modules that pay for importing LiteLLM (_LITELLM_GROUPS): in the test process (~4 s of
  CPU in each worker that imports it), or in the LiteLLM proxies' fork server (~9 s in each
  worker that starts a proxy).
"""

from __future__ import annotations

import os

import pytest
from _pytest.nodeid import NodeId

from picker_bench.stack import FORK_SERVER_ENV

# Pickers, sims and LiteLLM proxies the harness starts come from fork servers
# (picker_bench/forkserver.py): ~0.2-0.8 s of CPU of imports each (~9 s a proxy), ~1,000 starts
# per run. `PICKER_BENCH_FORK_SERVER=0 make test` starts every one as a fresh interpreter.
os.environ.setdefault(FORK_SERVER_ENV, "1")

# Session fixtures are left out: each worker has its own session anyway.
_SHARED_SCOPES = ("class", "module", "package")


_LITELLM_GROUPS = {
    **dict.fromkeys(("tests/integration/test_litellm.py", "tests/integration/test_litellm_grpc.py",
                     "tests/integration/test_litellm_runtime.py",
                     "tests/unit/test_litellm_deployments.py", "tests/unit/test_litellm_flow.py",
                     "tests/unit/test_litellm_observations.py"), "litellm"),
    "tests/integration/test_litellm_proxy.py": "litellm-proxy",
}


def pytest_itemcollected(item: pytest.Item) -> None:
    if not isinstance(item, pytest.Function) or item.get_closest_marker("xdist_group"):
        return
    module = item.nodeid.split("::")[0]
    if group := _LITELLM_GROUPS.get(module):
        item.add_marker(pytest.mark.xdist_group(group))
        return
    # _fixtureinfo: pytest offers no public view of an item's fixture definitions.
    shared = [name for name, chain in item._fixtureinfo.name2fixturedefs.items()
              if chain[-1].scope in _SHARED_SCOPES and chain[-1].baseid.startswith("tests")]
    if shared:
        item.add_marker(pytest.mark.xdist_group(module))


# The longest modules (each 30-100 s of one worker: `pytest --durations=40`), started first: the
# suite is CPU-bound on 2 cores, and one of them begun last ran alone at the end (the longest
# job first keeps the workers busy to the end).
_LONG_FIRST = (
    "tests/integration/test_readme.py",
    "tests/integration/test_litellm_proxy.py",
    "tests/integration/test_large_bodies.py",
    "tests/integration/test_replicas.py",
    "tests/integration/test_cache_aware_parity.py",
    "tests/integration/test_health_scale.py",
    "tests/integration/test_index_capacity.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (_LONG_FIRST), the rest as collected.

    xdist tells a worker's groups to its scheduler as a suffix of each test's id
    ("...::test@group"), set by assigning `item._nodeid`; pytest 9.2 keeps the id elsewhere,
    so the suffix is lost and groups are silently ignored (pytest-dev/pytest-xdist#1386, open;
    fix proposed in #1388: set the structured id). Until xdist's own fix, set it here."""
    rank = {path: i for i, path in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        suffix = f"@{'_'.join(names)}"
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = NodeId.parse(item.nodeid + suffix)
