"""The prefix index's compiled loops (picker/prefix/_native.c) against their Python fallbacks
(picker/prefix/native.py): the same hashes to the bit, the same LRU and masks, the same
replay; bad arguments are errors, never a crash; and the install builds them here."""

from __future__ import annotations

import shlex
import shutil
import sysconfig
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatch_build import compile_native
from picker.config import PickerConfig
from picker.prefix import approx, blocks, holders, native
from picker_bench.mooncake import SAMPLE_TRACE
from picker_bench.replay.command import read_lines
from picker_bench.replay.fleet import SimulatedFleet, replay_policy
from picker_sim.engine import SimConfig


def _compiled() -> ModuleType:
    try:
        from picker.prefix import _native
    except ImportError:
        pytest.skip("picker/prefix/_native.c is not built here")
    return _native


def _can_compile() -> bool:
    """What hatch_build.py needs: the interpreter's link command, its compiler, Python.h."""
    link = sysconfig.get_config_var("LDSHARED")
    return bool(link) and shutil.which(shlex.split(link)[0]) is not None and \
        (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def test_the_install_built_the_compiled_loops_and_they_are_used() -> None:
    """`make` installs with this interpreter's compiler: if it had one, the loops must be
    compiled and chosen (a silent fallback would hide a broken build)."""
    if not _can_compile():
        pytest.skip("no C compiler or Python.h here: the Python loops by design")
    assert native.IMPLEMENTATION == "c"
    assert blocks.chain is _compiled().chain


# Seeds as the index makes them (hashes) and as callers may pass them (any int).
_SEEDS = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers()
# Token ids as tokenizers give them, and ints of any size or sign (one digit and more).
_TOKENS = st.lists(st.integers(min_value=0, max_value=300_000) | st.integers(), max_size=80)


@settings(max_examples=300, deadline=None)
@given(seed=_SEEDS, text=st.text(max_size=80), block_size=st.integers(1, 9),
       first=st.integers(0, 12))
def test_text_blocks_hash_as_python_hashes_them(seed: int, text: str, block_size: int,
                                                first: int) -> None:
    last = len(text) // block_size
    first = min(first, last)
    assert _compiled().chain(seed, text, block_size, first, last) == \
        native.py_chain(seed, text, block_size, first, last)


@settings(max_examples=300, deadline=None)
@given(seed=_SEEDS, tokens=_TOKENS, block_size=st.integers(1, 9), first=st.integers(0, 12))
def test_token_blocks_hash_as_python_hashes_them(seed: int, tokens: list[int], block_size: int,
                                                 first: int) -> None:
    units = tuple(tokens)
    last = len(units) // block_size
    first = min(first, last)
    expected = native.py_chain(seed, units, block_size, first, last)
    # A list of ids hashes as their tuple, compiled or not (prompts are not copied into one).
    assert _compiled().chain(seed, units, block_size, first, last) == expected
    assert _compiled().chain(seed, tokens, block_size, first, last) == expected
    assert native.py_chain(seed, tokens, block_size, first, last) == expected


def test_blocks_of_other_hashable_items_hash_as_python_hashes_them() -> None:
    units = ("a", 1.5, True, None, (1, 2), -1, 2**100, b"x")
    assert _compiled().chain(7, units, 2, 0, 4) == native.py_chain(7, units, 2, 0, 4)
    assert _compiled().chain(7, list(units), 2, 0, 4) == native.py_chain(7, units, 2, 0, 4)


def test_a_token_list_shortened_while_hashed_is_an_error_not_a_crash() -> None:
    class Shrinking:
        def __init__(self, ids: list[object]) -> None:
            self.ids = ids

        def __hash__(self) -> int:
            self.ids.clear()  # frees every other item of the list being hashed
            return 1

    ids: list[object] = [1, 2, 3, 4]
    ids.insert(1, Shrinking(ids))
    with pytest.raises(RuntimeError, match="changed while it was hashed"):
        _compiled().chain(0, ids, 5, 0, 1)


# Holder masks of up to 70 workers: walks in machine words (alive < 2**63) and in ints.
_MASK = st.integers(0, 2**70)


@settings(max_examples=400, deadline=None)
@given(masks=st.dictionaries(st.integers(0, 30), _MASK, max_size=30),
       hashes=st.lists(st.integers(0, 30), max_size=30),
       alive=_MASK | st.integers(0, 15) | st.integers(-5, -1))
def test_the_walk_down_a_prompt_loses_holders_where_python_loses_them(
        masks: dict[int, int], hashes: list[int], alive: int) -> None:
    assert _compiled().drops(masks, hashes, alive) == native.py_drops(masks, hashes, alive)


# Operations on one worker's LRU: record a prompt (of shared and new blocks) or trim.
_BLOCK = st.integers(0, 40)
_OPERATION = st.tuples(st.sampled_from(["record", "evict"]), st.lists(_BLOCK, max_size=12),
                       st.integers(0, 15), st.sampled_from([1, 2, 4, 2**70]))


@settings(max_examples=300, deadline=None)
@given(operations=st.lists(_OPERATION, max_size=25))
def test_recording_and_trimming_leave_the_lru_and_masks_as_python_leaves_them(
        operations: list[tuple[str, list[int], int, int]]) -> None:
    compiled = _compiled()
    states = {impl: ({bit: OrderedDict[int, None]() for bit in (1, 2, 4, 2**70)},
                     dict[int, int]()) for impl in ("c", "python")}
    for kind, hashes, number, bit in operations:
        for impl, (lrus, masks) in states.items():
            lru = lrus[bit]
            if kind == "record":
                fn = compiled.record if impl == "c" else native.py_record
                fn(lru, masks, hashes, max(number, 1), bit)
            else:
                fn = compiled.evict_oldest if impl == "c" else native.py_evict_oldest
                fn(lru, masks, min(number, len(lru)), bit)
    (c_lrus, c_masks), (py_lrus, py_masks) = states["c"], states["python"]
    assert {bit: list(lru) for bit, lru in c_lrus.items()} == \
        {bit: list(lru) for bit, lru in py_lrus.items()}
    assert c_masks == py_masks


@pytest.mark.parametrize("call, error", [
    (lambda n: n.chain(0, range(3), 1, 0, 3), TypeError),  # not a str, tuple or list
    (lambda n: n.chain(0, "abc", 0, 0, 1), ValueError),
    (lambda n: n.chain(0, "abc", 1, 0, 4), ValueError),  # past the end
    (lambda n: n.chain(0, "abc", 1, -1, 2), ValueError),
    (lambda n: n.chain(0, ([],), 1, 0, 1), TypeError),  # an unhashable item
    (lambda n: n.chain(0, "abc"), TypeError),
    (lambda n: n.record({}, {}, [1], 1, 1), TypeError),  # a dict, not an OrderedDict
    (lambda n: n.record(OrderedDict(), {}, (1,), 1, 1), TypeError),
    (lambda n: n.record(OrderedDict(), {}, [1], 1, "bit"), TypeError),
    (lambda n: n.evict_oldest(OrderedDict(), {}, 1, 1), KeyError),  # more than it holds
    (lambda n: n.drops({}, (1,), 1), TypeError),
    (lambda n: n.drops({}, ["x"], 1), TypeError),  # block hashes are ints
    (lambda n: n.drops({}, ["x"], 2**70), TypeError),
    (lambda n: n.record(OrderedDict(), {}, [1, "x"], 2, 1), TypeError),
    (lambda n: n.record(OrderedDict(), {}, [1], -1, 1), ValueError),
    # Only exact types: another type's methods would run Python code in the middle of a walk.
    (lambda n: n.record(type("Lru", (OrderedDict,), {})(), {}, [1], 1, 1), TypeError),
    (lambda n: n.record(OrderedDict(), {}, [1], 1, True), TypeError),
    (lambda n: n.record(OrderedDict(), {1: "x"}, [1], 1, 1), TypeError),  # a mask not an int
    (lambda n: n.drops({1: 1.5}, [1], 1), TypeError),
    (lambda n: n.evict_oldest(OrderedDict({1: None}), {1: "x"}, 1, 1), TypeError),
    (lambda n: n.drops({1: "x"}, [1], 1), TypeError),  # a mask that is not an int
    (lambda n: n.drops({1: "x"}, [1], 2**70), TypeError),
])
def test_bad_arguments_are_errors_not_crashes(call: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        call(_compiled())  # type: ignore[operator]


def test_a_replay_with_the_prefix_index_is_the_same_with_either_implementation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path (match, record, calibrated trims, eviction) through a replay whose small
    caches make the index evict: the compiled loops and the Python ones serve every request
    alike."""
    if native.IMPLEMENTATION != "c":
        pytest.skip("the compiled loops are not in use here")
    lines = read_lines(SAMPLE_TRACE)
    config = PickerConfig.model_validate({"prefix": {"enabled": True}})
    fleet = SimulatedFleet(config, SimConfig.from_profile(
        "8b-h100-tokens", cache_blocks=1500, max_concurrency=8), engines=3, speedup=20.0,
        seed=5)
    compiled = {policy: replay_policy(lines, policy, fleet)
                for policy in ("weighted", "prefix_cache")}
    monkeypatch.setattr(blocks, "chain", native.py_chain)
    monkeypatch.setattr(approx, "record", native.py_record)
    monkeypatch.setattr(approx, "evict_oldest", native.py_evict_oldest)
    monkeypatch.setattr(holders, "drops", native.py_drops)
    assert {policy: replay_policy(lines, policy, fleet) for policy in compiled} == compiled


def test_a_source_that_does_not_compile_is_reported_not_raised(tmp_path: Path) -> None:
    if not _can_compile():
        pytest.skip("no C compiler or Python.h here")
    (tmp_path / "broken.so").write_text("an older build")
    source = tmp_path / "broken.c"
    source.write_text("this is not C;\n")
    failure = compile_native(source, tmp_path / "broken.so")
    assert failure is not None and "exited" in failure and "broken.c" in failure
    assert not (tmp_path / "broken.so").exists()  # no older module left to be imported
