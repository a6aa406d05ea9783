"""PrefixProducer: computes each request's prefix match before policies run, records after.

The one place that knows how a request becomes block hashes (tokenizer, block size, namespace)
and which index holds them; policies only read `request.prefix`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field

from picker.prefix.approx import ApproxPrefixIndex
from picker.prefix.blocks import block_hashes, namespace_hash
from picker.prefix.index import PrefixIndex
from picker.prefix.tokenizers import RemoteTokenizer, TokenizerSettings, load_hf_tokenizer
from picker.registry import Worker
from picker.request import RoutingRequest

__all__ = ["PrefixProducer", "PrefixSettings"]


class PrefixSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Characters per block with the character tokenizer; 128 is AIBrix's recommendation.
    block_size: int = Field(default=128, ge=1)
    # ~160 bytes per block (measured): 32768 blocks is ~5 MB per worker.
    capacity_blocks: int = Field(default=32768, ge=1, description="Per worker")
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    # Size each worker's index like its engine's KV cache once `vllm:cache_config_info` has been
    # scraped (num_gpu_blocks x block_size tokens, at ~4 characters per token for characters).
    autotune_capacity: bool = True


class PrefixProducer:
    """Built at start-up (an hf tokenizer file is read here, so a bad path fails early)."""

    def __init__(self, settings: PrefixSettings, index: PrefixIndex | None = None) -> None:
        self._block_size = settings.block_size
        self._autotune = settings.autotune_capacity
        self._tuned: set[str] = set()
        self.index: PrefixIndex = index or ApproxPrefixIndex(settings.capacity_blocks)
        kind = settings.tokenizer.kind
        path = settings.tokenizer.path
        self._hf = (load_hf_tokenizer(path, settings.tokenizer.chat_template)
                    if kind == "hf" and path else None)
        self.remote = RemoteTokenizer(settings.tokenizer) if kind == "remote" else None

    def annotate(
        self, request: RoutingRequest, candidates: Sequence[Worker]
    ) -> tuple[RoutingRequest, list[int]]:
        units: str | Sequence[int]
        if request.tokens is not None:
            units, space = request.tokens, "tokens"
        elif self._hf is not None:
            units, space = self._hf.units(request), "tokens"
        else:
            units, space = request.prompt_text, "characters"
        # Character and token blocks live in different namespaces: a fallback to characters
        # never claims a match against token blocks.
        seed = namespace_hash(request.model, salt=space)
        hashes = block_hashes(seed, units, self._block_size)
        match = self.index.match(hashes, (w.id for w in candidates))
        return replace(request, prefix=match), hashes

    def record(self, hashes: list[int], worker: Worker) -> None:
        if self._autotune and worker.id not in self._tuned:
            self._tune(worker)
        self.index.record(hashes, worker.id)

    def _tune(self, worker: Worker) -> None:
        engine = worker.engine
        if engine is None or not engine.num_gpu_blocks or not engine.block_size:
            return
        tokens = engine.num_gpu_blocks * engine.block_size
        units = tokens if self._hf is not None or self.remote is not None else tokens * 4
        self.index.set_capacity(worker.id, units // self._block_size)
        self._tuned.add(worker.id)

    # RegistryListener: a removed worker's cache is gone with it.
    def worker_added(self, worker: Worker) -> None:
        pass

    def worker_removed(self, worker: Worker) -> None:
        self.index.remove_worker(worker.id)
        self._tuned.discard(worker.id)
