"""Pick sharing among picker replicas: the frames, the producer's publish/apply, and two or
three sharing services on loopback (one process, so one PYTHONHASHSEED)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from picker.config import load_config
from picker.errors import ConfigError
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.speed import Observation, predicted_ttft
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import ReplicaMetrics
from picker.prefix.index import PromptBlocks
from picker.prefix.producer import PrefixProducer, PrefixSettings
from picker.replicas.joining import join_replicas
from picker.replicas.settings import ReplicaSettings, host_port
from picker.replicas.sharing import PickSharing
from picker.replicas.wire import (
    MAX_BLOCKS,
    VERSION,
    Hello,
    Pick,
    Proof,
    challenge,
    decode_hello,
    decode_pick,
    decode_proof,
    frame,
    proof_valid,
    prove,
)
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime
from picker_bench.stack import free_port
from tests.waiting import eventually

SYSTEM = "shared system prompt " * 40
SECRET = "replica-secret-never-logged-31f"


def body(data: bytes) -> bytes:
    assert int.from_bytes(data[:4]) == len(data) - 4
    return data[4:]


# -- the frames ---------------------------------------------------------------------------------

def test_pick_and_hello_round_trip_compactly() -> None:
    hashes = [2**63 - 1, -(2**63), 0, 12345]
    pick = Pick("w-1", 8000, 3, hashes)
    data = frame(pick)
    assert decode_pick(body(data)) == pick
    # Array-encoded: no field names on the wire, about 9 bytes per 64-bit hash.
    assert len(data) < 4 + 8 + 3 * 4 + 9 * len(hashes)
    hello = Hello(VERSION, 7, 128, -5, b"c" * 32)
    assert decode_hello(body(frame(hello))) == hello
    proof = Proof(b"c" * 32, b"m" * 32)
    assert decode_proof(body(frame(proof))) == proof


def test_proofs_need_the_key_and_the_role_and_both_challenges() -> None:
    mac = prove(SECRET.encode(), False, b"a" * 32, b"c" * 32)
    assert proof_valid(SECRET.encode(), mac, False, b"a" * 32, b"c" * 32)
    assert not proof_valid(b"another secret!!", mac, False, b"a" * 32, b"c" * 32)
    assert not proof_valid(SECRET.encode(), mac, True, b"a" * 32, b"c" * 32)  # role
    assert not proof_valid(SECRET.encode(), mac, False, b"b" * 32, b"c" * 32)  # stale challenge


class _PickOfVersion2(msgspec.Struct, array_like=True, frozen=True):
    """A Pick as peers before issue 35 encoded and decoded it."""

    worker: str
    units: int
    predicted: int
    hashes: list[int]


def test_picks_with_and_without_uncached_tokens_cross_versions() -> None:
    """The uncached tokens came without a VERSION bump: a frame without them decodes as 0, and
    a peer that does not know the field skips it."""
    old = _PickOfVersion2("w", 8000, 3, [1, 2])
    assert decode_pick(msgspec.msgpack.encode(old)) == Pick("w", 8000, 3, [1, 2], 0)
    new = msgspec.msgpack.encode(Pick("w", 8000, 3, [1, 2], 1500))
    assert msgspec.msgpack.decode(new, type=_PickOfVersion2) == old
    assert decode_pick(new).uncached == 1500


@pytest.mark.parametrize("payload", [
    b"\xc1",  # not MessagePack
    msgspec.msgpack.encode(["w", 1, 0, ["not a hash"]]),
    msgspec.msgpack.encode(["w", -1, 0, []]),
    msgspec.msgpack.encode(["w", 1, 0, [], -5]),
    msgspec.msgpack.encode(["w", 1, 0, [1] * (MAX_BLOCKS + 1)]),
    msgspec.msgpack.encode(Hello(VERSION, 1, 128, 0, b"")),  # a greeting is no pick
])
def test_bad_picks_are_value_errors(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode_pick(payload)


# -- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9004", ("127.0.0.1", 9004)), ("[::1]:80", ("::1", 80)),
    ("peer.svc:1", ("peer.svc", 1)),
])
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["9004", "host:", ":9004", "host:0", "host:70000", "h:x"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        host_port(text)


@pytest.mark.parametrize(("yaml", "key"), [
    ("replicas: {listen: '127.0.0.1:9004'}", "replicas"),  # no peers, no dns
    ("replicas: {listen: '127.0.0.1:9004', peers: ['a:1'], dns: {name: n, port: 1}}",
     "replicas"),
    ("replicas: {listen: 'nowhere', peers: ['a:1']}", "replicas.listen"),
    ("replicas: {listen: '127.0.0.1:9004', peers: ['a']}", "replicas.peers.0"),  # the entry itself
    # Needs the approximate index: kv_events replicas agree through the engines' events.
    ("replicas: {listen: '127.0.0.1:9004', peers: ['a:1']}", "replicas"),
    ("prefix: {enabled: true, index: kv_events, tokenizer: {kind: remote, endpoint: "
     "'http://t:1'}}\nreplicas: {listen: '127.0.0.1:9004', peers: ['a:1']}", "replicas"),
])
def test_bad_replica_settings_name_the_key(tmp_path: Path, yaml: str, key: str) -> None:
    path = tmp_path / "picker.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.key == key


def test_a_replica_listening_beyond_loopback_needs_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "picker.yaml"
    base = "prefix: {enabled: true}\nreplicas: {listen: '0.0.0.0:9004', peers: ['a:1']"
    path.write_text(base + "}")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.key == "replicas" and "replicas.secret" in str(error.value)
    assert "LLM_PICKER_REPLICAS__SECRET" in str(error.value)
    config = load_config(path, env={"LLM_PICKER_REPLICAS__SECRET": SECRET})
    assert config.replicas is not None and config.replicas.key() == SECRET.encode()
    secret_file = tmp_path / "secret"
    for text, problem in (("short", "under 16 characters"), (None, "No such file")):
        if text is not None:
            secret_file.write_text(text)
        path.write_text(base + f", secret_file: {tmp_path / ('secret' if text else 'nope')}}}")
        with pytest.raises(ConfigError, match=problem):
            load_config(path, env={})
    secret_file.write_text(SECRET + "\n")
    path.write_text(base + f", secret_file: {secret_file}}}")
    config = load_config(path, env={})
    assert config.replicas is not None and config.replicas.key() == SECRET.encode()
    with pytest.raises(ConfigError, match="not both"):
        load_config(path, env={"LLM_PICKER_REPLICAS__SECRET": SECRET})


def test_sharing_needs_a_fixed_hash_seed(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "picker.yaml"
    path.write_text("prefix: {enabled: true}\n"
                    "replicas: {listen: '127.0.0.1:9004', dns: {name: peers, port: 9004}}")
    config = load_config(path, env={})
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with pytest.raises(ConfigError, match="PYTHONHASHSEED"):
        PickerRuntime(config)
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    PickerRuntime(config)  # built, nothing started


# -- the producer's hook --------------------------------------------------------------------------

def worker(worker_id: str) -> Worker:
    return Worker(WorkerSpec(url=f"http://{worker_id}:1", id=worker_id, models=["m"]))


def prompt(text: str) -> PromptBlocks:
    return PromptBlocks("m", text, is_tokens=False)


def routed(producer: PrefixProducer, text: str, chosen: Worker,
           candidates: list[Worker]) -> None:
    """What the router does with a request: annotate, (pick), record."""
    _, blocks = producer.annotate(RoutingRequest(model="m", api=Api.CHAT, prompt_text=text),
                                  candidates)
    producer.record(blocks, chosen)


def matched(producer: PrefixProducer, text: str, candidates: list[Worker]) -> dict[str, int]:
    request, _ = producer.annotate(RoutingRequest(model="m", api=Api.CHAT, prompt_text=text),
                                   candidates)
    assert request.prefix is not None
    return dict(request.prefix.matched)


SETTINGS = PrefixSettings(enabled=True, block_size=16, autotune_capacity=False)


def test_recorded_picks_are_published_and_peers_apply_without_republishing() -> None:
    fleet = [worker("a"), worker("b")]
    published: list[Pick] = []
    deciding = PrefixProducer(SETTINGS)
    deciding.publish_to(lambda *pick: published.append(Pick(*pick)))
    echoed: list[Pick] = []
    peer = PrefixProducer(SETTINGS)
    peer.publish_to(lambda *pick: echoed.append(Pick(*pick)))
    routed(deciding, SYSTEM + "first question", fleet[1], fleet)
    (pick,) = published
    assert pick.worker == "b" and pick.units == len(SYSTEM + "first question")
    assert pick.hashes == prompt(SYSTEM + "first question").hashes(16)
    assert pick.predicted == 0  # nothing was known yet
    assert matched(peer, SYSTEM + "second question", fleet) == {}
    peer.apply(pick, fleet[1])
    assert echoed == []  # applied, not passed on
    # The peer now expects the shared system prompt on b, as the deciding replica does.
    assert matched(peer, SYSTEM + "second question", fleet) == matched(
        deciding, SYSTEM + "second question", fleet) == {"b": len(SYSTEM) // 16}
    routed(deciding, SYSTEM + "third", fleet[1], fleet)
    assert published[1].predicted == len(SYSTEM) // 16  # the decision's own prediction


async def test_a_pick_on_the_loop_is_published_after_the_answer_with_every_hash() -> None:
    """On the picker's loop a pick is learned and published once the deciding callback
    yields; the match hashed only the prompt's first blocks (nobody held them), the peers
    still get the whole chain."""
    fleet = [worker("a"), worker("b")]
    published: list[Pick] = []
    deciding = PrefixProducer(SETTINGS)
    deciding.publish_to(lambda *pick: published.append(Pick(*pick)))
    text = SYSTEM * 40 + "a long new prompt"
    routed(deciding, text, fleet[0], fleet)
    assert published == []
    await asyncio.sleep(0)
    (pick,) = published
    assert pick.hashes == prompt(text).hashes(16) and len(pick.hashes) == len(text) // 16


def test_peers_picks_feed_the_index_calibration() -> None:
    """The engines count every replica's traffic: calibration must see peers' picks too."""
    settings = PrefixSettings(enabled=True, block_size=16)
    peer = PrefixProducer(settings)
    assert peer.calibration is not None
    peer.apply(Pick("a", 4000, 10, [1, 2, 3]), worker("a"))
    state = peer.calibration.snapshot()["a"]
    assert (state.units_sent, state.units_predicted) == (4000, 160)


# -- services on loopback -------------------------------------------------------------------------

class Replica:
    def __init__(self, port: int, peers: list[int], block_size: int = 16,
                 queue: int = 4096, secret: str = SECRET) -> None:
        self.registry = CollectorRegistry()
        self.applied: list[Pick] = []
        self.known = {"a", "b"}
        self.sharing = PickSharing(
            ReplicaSettings(listen=f"127.0.0.1:{port}", queue=queue, max_backoff_secs=0.2,
                            peers=[f"127.0.0.1:{p}" for p in peers], secret=SecretStr(secret),
                            connect_timeout_secs=0.5),
            block_size, ReplicaMetrics(self.registry), self._apply)

    def _apply(self, pick: Pick) -> bool:
        if pick.worker not in self.known:
            return False
        self.applied.append(pick)
        return True

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def trio() -> AsyncIterator[list[Replica]]:
    """Three replicas, each configured with all three addresses (itself included)."""
    ports = [free_port() for _ in range(3)]
    replicas = [Replica(port, ports) for port in ports]
    for replica in replicas:
        await replica.sharing.start()
    yield replicas
    for replica in replicas:
        await replica.sharing.stop()


async def test_every_pick_reaches_every_other_replica_once(trio: list[Replica]) -> None:
    await eventually(lambda: all(r.metric("llm_picker_replica_peers_connected") == 2 for r in trio))
    for replica in trio:
        assert len(replica.sharing.peers()) == 2  # its own address recognised and left idle
    trio[0].sharing.publish("a", 100, 0, [1, 2, 3], 0)
    trio[1].sharing.publish("b", 50, 1, [4], 0)
    await eventually(lambda: len(trio[2].applied) == 2 and len(trio[0].applied) == 1
                and len(trio[1].applied) == 1)
    assert trio[1].applied == [Pick("a", 100, 0, [1, 2, 3])]
    assert trio[0].applied == [Pick("b", 50, 1, [4])]
    assert sorted(p.worker for p in trio[2].applied) == ["a", "b"]
    await asyncio.sleep(0.1)
    assert [len(r.applied) for r in trio] == [1, 1, 2]  # nothing echoed back
    assert trio[0].metric("llm_picker_replica_picks_sent_total", peer=f"127.0.0.1:"
                          f"{trio[1].sharing.port}") == 1
    assert trio[2].metric("llm_picker_replica_picks_received_total") == 2


async def test_publish_from_another_thread(trio: list[Replica]) -> None:
    await eventually(lambda: trio[0].metric("llm_picker_replica_peers_connected") == 2)
    await asyncio.to_thread(trio[0].sharing.publish, "a", 1, 0, [9], 0)
    await eventually(lambda: len(trio[1].applied) == 1 and len(trio[2].applied) == 1)


async def test_unknown_workers_are_counted_not_applied(trio: list[Replica]) -> None:
    await eventually(lambda: trio[0].metric("llm_picker_replica_peers_connected") == 2)
    trio[0].sharing.publish("gone", 1, 0, [9], 0)
    await eventually(lambda: trio[1].metric("llm_picker_replica_picks_dropped_total",
                                       reason="unknown_worker") == 1)
    assert trio[1].applied == []


async def test_a_peer_down_costs_its_picks_only_and_it_is_rejoined() -> None:
    ports = [free_port(), free_port()]
    first, second = Replica(ports[0], ports), Replica(ports[1], ports)
    await first.sharing.start()
    try:
        await eventually(lambda: len(first.sharing.peers()) == 1)  # its own address recognised
        first.sharing.publish("a", 1, 0, [1], 0)  # nobody there yet
        await eventually(lambda: first.metric("llm_picker_replica_picks_dropped_total",
                                         reason="peer_down") == 1)
        await second.sharing.start()
        await eventually(lambda: first.metric("llm_picker_replica_peers_connected") == 1)
        first.sharing.publish("a", 2, 0, [2], 0)
        await eventually(lambda: [p.units for p in second.applied] == [2])
        await second.sharing.stop()
        await eventually(lambda: first.metric("llm_picker_replica_peers_connected") == 0)
        first.sharing.publish("a", 3, 0, [3], 0)
        await eventually(lambda: first.metric("llm_picker_replica_picks_dropped_total",
                                         reason="peer_down") == 2)
        second = Replica(ports[1], ports)  # a new process on the same address
        await second.sharing.start()
        await eventually(lambda: first.metric("llm_picker_replica_peers_connected") == 1)
        first.sharing.publish("a", 4, 0, [4], 0)
        await eventually(lambda: [p.units for p in second.applied] == [4])
    finally:
        await first.sharing.stop()
        await second.sharing.stop()


async def test_overload_drops_instead_of_queueing_without_bound() -> None:
    ports = [free_port(), free_port()]
    replica = Replica(ports[0], ports, queue=2)
    await replica.sharing.start()
    try:
        for units in range(5):  # no await between: the sender task cannot run
            replica.sharing.publish("a", units, 0, [units], 0)
        assert replica.metric("llm_picker_replica_picks_dropped_total", reason="overload") == 3
    finally:
        await replica.sharing.stop()


async def test_incompatible_peers_do_not_share() -> None:
    ports = [free_port(), free_port()]
    first, second = Replica(ports[0], ports), Replica(ports[1], ports, block_size=64)
    await first.sharing.start()
    await second.sharing.start()
    try:
        await asyncio.sleep(0.5)
        assert first.sharing.peers() == {f"127.0.0.1:{ports[1]}": False}
        assert second.sharing.peers() == {f"127.0.0.1:{ports[0]}": False}
    finally:
        await first.sharing.stop()
        await second.sharing.stop()


async def linked(port: int, key: str = SECRET) -> tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter, Hello]:
    """A raw socket through the handshake, as a peer replica holding `key` goes through it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = decode_hello(await reader.readexactly(int.from_bytes(await reader.readexactly(4))))
    mine = challenge()
    writer.write(frame(Proof(mine, prove(key.encode(), False, hello.challenge, mine))))
    return reader, writer, hello


async def test_garbage_closes_the_link_and_is_counted(trio: list[Replica]) -> None:
    reader, writer, hello = await linked(trio[0].sharing.port or 0)
    assert hello.replica == trio[0].sharing.replica_id
    answer = decode_proof(await reader.readexactly(int.from_bytes(await reader.readexactly(4))))
    assert proof_valid(SECRET.encode(), answer.mac, True, hello.challenge, b"") is False
    writer.write(frame(Pick("a", 1, 0, [1])) + (5).to_bytes(4, "big") + b"\xc1junk")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the replica
    writer.close()
    assert [p.units for p in trio[0].applied] == [1]  # what came before the garbage
    assert trio[0].metric("llm_picker_replica_picks_dropped_total", reason="invalid") == 1
    reader, writer, _ = await linked(trio[0].sharing.port or 0)
    await reader.readexactly(int.from_bytes(await reader.readexactly(4)))  # the answer
    writer.write((2**31).to_bytes(4, "big"))  # a 2 GB frame is refused before it is read
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    writer.close()
    assert trio[0].metric("llm_picker_replica_picks_dropped_total", reason="invalid") == 2


@pytest.mark.parametrize("opening", ["picks", "wrong_secret", "silence"])
async def test_a_raw_socket_without_the_secret_gets_no_pick_applied(
        trio: list[Replica], opening: str, caplog: pytest.LogCaptureFixture) -> None:
    """Forged picks from a raw socket (straight away, after a proof under another secret, or
    after waiting) are never applied; the link is closed and the refusal logged, secret-free."""
    target = trio[0]
    port = target.sharing.port or 0
    forged = b"".join(frame(Pick("a", units, 0, [units])) for units in range(2000))
    if opening == "wrong_secret":
        reader, writer, _ = await linked(port, "not-the-replica-secret")
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(int.from_bytes(await reader.readexactly(4)))  # the Hello
    if opening == "silence":
        await asyncio.sleep(0.7)  # past connect_timeout_secs
    with contextlib.suppress(ConnectionError):
        writer.write(forged)
        await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer given
    writer.close()
    await eventually(lambda: target.metric("llm_picker_replica_links_refused_total") == 1)
    assert target.applied == []
    assert target.metric("llm_picker_replica_picks_received_total") == 0
    assert "refused" in caplog.text and SECRET not in caplog.text


async def test_replicas_with_different_secrets_share_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    ports = [free_port(), free_port()]
    first = Replica(ports[0], ports)
    second = Replica(ports[1], ports, secret="a-different-secret-for-2")
    await first.sharing.start()
    await second.sharing.start()
    try:
        first.known.add("x")
        await eventually(lambda: first.metric("llm_picker_replica_links_refused_total") >= 1
                         and second.metric("llm_picker_replica_links_refused_total") >= 1)
        assert first.sharing.peers() == {f"127.0.0.1:{ports[1]}": False}
        assert second.sharing.peers() == {f"127.0.0.1:{ports[0]}": False}
        assert SECRET not in caplog.text and "a-different-secret-for-2" not in caplog.text
    finally:
        await first.sharing.stop()
        await second.sharing.stop()


class _Side:
    """One replica as the runtime joins it: a registry of engines x and y, the approximate
    index, and pick sharing over loopback."""

    def __init__(self, port: int, peers: list[int], loads: bool = True) -> None:
        self.registry = WorkerRegistry()
        self.prefix = PrefixProducer(SETTINGS)
        self.registry.add_listener(self.prefix)
        for name in ("x", "y"):
            self.registry.add(WorkerSpec(url=f"http://{name}:1", id=name, models=["m"]))
        self.sharing = join_replicas(
            ReplicaSettings(listen=f"127.0.0.1:{port}", max_backoff_secs=0.2,
                            peers=[f"127.0.0.1:{p}" for p in peers], secret=SecretStr(SECRET),
                            connect_timeout_secs=0.5),
            16, self.registry, self.prefix, ReplicaMetrics(CollectorRegistry()), loads)

    def engine(self, name: str) -> Worker:
        worker = self.registry.get(name)
        assert worker is not None
        return worker


@pytest.mark.parametrize("loads", [True, False])
async def test_a_peers_long_prompt_is_ahead_of_requests_here(
        loads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica A sends a long prompt to engine x, which has reported no load: replica B's
    backlog and predicted TTFT for x count it at once, y's do not. The processes of one
    picker (loads False) share their backlog in a table instead: no double count."""
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    ports = [free_port(), free_port()]
    a, b = _Side(ports[0], ports), _Side(ports[1], ports, loads)
    rate = 100.0  # tokens/s, as B learned from x's earlier answers: the backlog barely drains
    for engine in ("x", "y"):
        b.registry.observe(b.engine(engine), Observation(prompt_tokens=int(rate),
                                                         cached_tokens=0, ttft_secs=1.0))
    await a.sharing.start()
    await b.sharing.start()
    try:
        await eventually(lambda: a.sharing.peers() == {f"127.0.0.1:{ports[1]}": True})
        text = SYSTEM * 10 + "summarise"
        request, blocks = a.prefix.annotate(
            RoutingRequest(model="m", api=Api.CHAT, prompt_text=text), a.registry.workers())
        assert request.prefix is not None
        uncached = request.prefix.uncached_tokens("x")
        assert uncached > 1000
        a.prefix.record(blocks, a.engine("x"))  # what A's router does once it chose x
        x, y = b.engine("x"), b.engine("y")
        await eventually(lambda: b.prefix.index.blocks_of("x") > 0)  # the pick arrived
        now = time.monotonic()
        expected = uncached if loads else 0.0
        assert x.prefill_ahead(now) == pytest.approx(expected, abs=rate)
        assert y.prefill_ahead(now) == 0.0 and x.engine is None
        # A new 100-token prompt on x waits for A's prompt; on y it does not.
        assert predicted_ttft(x.speed, 100, 0, x.prefill_ahead(now)) == pytest.approx(
            (expected + 100) / rate, abs=1.0)
        assert x.prefill_ahead(now + (uncached + 1) / rate) == 0.0  # drained at x's rate
    finally:
        await a.sharing.stop()
        await b.sharing.stop()
