"""One path after decoding: an engine's msgpack batch, relayed over gRPC by the engine's own
servicer code (smg_grpc_servicer's kv_relay, which the picker does not use), leaves the KV-event
index exactly as the same batch read over ZMQ does."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from smg_grpc_servicer.kv_relay import Normalizer
from smg_grpc_servicer.kv_relay import decode_batch as relay_decode

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.fleet.registry import Worker
from picker.fleet.worker_spec import WorkerSpec
from picker.prefix.index import PromptBlocks
from picker.prefix.kv_apply import EventApplier, KvEventMetrics
from picker.prefix.kv_grpc_wire import decode_grpc_batch
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings
from tests import kv_engines as eng

B = 2
PROMPTS = [[1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 4, 4], [5, 5], [1, 1]]


def applied(feed: str, payloads: list[bytes]) -> tuple[SyncPrefixIndex, CollectorRegistry]:
    index, metrics = SyncPrefixIndex(KvEventSettings(pending_secs=0)), CollectorRegistry()
    worker = Worker(WorkerSpec(url="127.0.0.1:9", id="w", models=["m"], kv_block_size=B))
    applier = EventApplier(worker, index, KvEventMetrics(metrics))
    relay = Normalizer()
    for seq, payload in enumerate(payloads):
        if feed == "zmq":
            applier.apply(payload)
        else:  # the servicer's message, as the picker's own classes read its bytes
            message = relay.normalize_batch(relay_decode(payload), seq, 0)
            applier.apply_batch(decode_grpc_batch(
                pb.KvEventBatch.FromString(message.SerializeToString())))
    return index, metrics


@pytest.mark.parametrize("engine", eng.ENGINES, ids=lambda e: e.name)
def test_a_relayed_batch_indexes_as_its_msgpack_does(engine: eng.Engine) -> None:
    a, b, c, d = b"\x01" * 32, (1 << 64) - 3, 7, b"\x00" * 31 + b"\x09"
    payloads = [
        engine.batch(0, [engine.stored([a, b], None, [1, 1, 2, 2], B, medium="GPU"),
                         engine.stored([c], b, [3, 3], B, medium="GPU")]),
        engine.batch(0, [engine.stored([d], b, [4, 4], B, medium="CPU"),
                         engine.removed([c], medium="GPU")]),
        engine.batch(0, [engine.stored([b"\x05" * 32], None, [5, 5], B, medium="GPU")]),
    ]
    zmq, zmq_metrics = applied("zmq", payloads)
    grpc, grpc_metrics = applied("grpc", payloads)
    held = [zmq.match(PromptBlocks("m", p, True), ["w"]).blocks("w") for p in PROMPTS]
    assert held == [2, 3, 1, 1]  # the removed block's prompt stops before it
    assert [grpc.match(PromptBlocks("m", p, True), ["w"]).blocks("w") for p in PROMPTS] == held
    assert grpc.blocks_of("w") == zmq.blocks_of("w")
    for name in ("stored", "removed"):
        labels = {"worker": "w", "event": name}
        assert grpc_metrics.get_sample_value("llm_picker_kv_events_total", labels) == \
            zmq_metrics.get_sample_value("llm_picker_kv_events_total", labels)
    cleared, _ = applied("grpc", [*payloads, engine.batch(0, [engine.cleared()])])
    assert cleared.blocks_of("w") == 0


def test_remote_blocks_are_skipped_and_counted() -> None:
    batch = pb.KvEventBatch(sequence_number=1, events=[pb.KvCacheEvent(stored=pb.KvBlocksStored(
        blocks=[pb.KvBlock(block_hash=1, token_ids=[1, 1], block_size=B)],
        locality=pb.KV_CACHE_LOCALITY_REMOTE))])
    decoded = decode_grpc_batch(batch)
    assert (list(decoded.events), decoded.skipped, decoded.data_parallel_rank) == ([], 1, None)
