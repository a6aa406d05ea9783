"""The simulated engine's prefix cache for prompts made of runs of blocks (a replayed trace).

The same cache as picker_sim.cache - whole engine blocks, LRU, pinned while in use, a prompt's
tail not kept when everything cached is pinned - for a prompt known as a sequence of runs
`(key, n)`: blocks 0..n-1 of the key, block `(key, i)` being one engine block. A Mooncake
trace's 512-token block is such a run of 32 blocks of 16 tokens, nearly always stored, used
and evicted whole; keeping one entry per run instead of one per engine block makes the
cache's work per prompt a few dozen dict operations instead of ~750 (a replay's main cost,
docs/benchmarks.md "Replay speed, per trace block").

It stays exact, block for block: a run is held as pieces `[lo, hi)` of its blocks that share
an owner and pins and sit side by side in the LRU order. A piece is cut where the blocks'
fates part: eviction taking only its oldest blocks, a prompt using only its first blocks, a
prompt stored only up to where the cache is full. Pins follow picker_sim.cache: the owner (the
request that used the piece last) pins it while it runs, and the earlier holders still running
are listed on the piece.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import count

__all__ = ["RunCache", "RunClaim"]


@dataclass(slots=True)
class RunClaim:
    """What one request holds: `hit_blocks` leading blocks were cached when it came."""

    hit_blocks: int
    number: int


class _Piece:
    """Blocks [lo, hi) of `key`, side by side in the LRU order at `stamp`."""

    __slots__ = ("key", "lo", "hi", "owner", "stamp", "holders")

    def __init__(self, key: Hashable, lo: int, hi: int, owner: int, stamp: int,
                 holders: list[int]) -> None:
        self.key = key
        self.lo = lo
        self.hi = hi
        self.owner = owner
        self.stamp = stamp
        self.holders = holders  # earlier owners still running that used it (one per use)


class RunCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._size = 0  # blocks held
        self._lru: dict[int, _Piece] = {}  # stamp -> piece, least recently used first
        self._pieces: dict[Hashable, list[_Piece]] = {}  # key -> its pieces held
        self._running: dict[int, list[_Piece]] = {}  # claim -> pieces it holds besides owned
        self._stamps = count()
        self._numbers = count()

    def __len__(self) -> int:
        return self._size

    def usage(self) -> float:
        return self._size / self.capacity

    def cached_prefix(self, runs: Sequence[tuple[Hashable, int]]) -> int:
        """How many leading blocks are cached now."""
        hit = 0
        for key, n in runs:
            at = 0
            while at < n and (piece := self._piece_at(key, at)) is not None:
                at = min(piece.hi, n)
            hit += at
            if at < n:
                break
        return hit

    def acquire(self, runs: Sequence[tuple[Hashable, int]]) -> RunClaim:
        """Pin a prompt's blocks, storing missing ones (evicting unpinned LRU blocks); as
        picker_sim.cache.BlockCache.acquire does for the same blocks one by one."""
        claim = RunClaim(self.cached_prefix(runs), next(self._numbers))
        self._running[claim.number] = []
        at = 0
        while at < len(runs):
            new = self._new_stretch(runs, at)
            if new:
                if not self._store_new(runs[at:at + new], claim.number):
                    break
                at += new
            elif self._acquire_run(*runs[at], claim.number):
                at += 1
            else:
                break  # full of pinned blocks: the rest is neither kept nor pinned
        return claim

    def release(self, claim: RunClaim) -> None:
        """Unpin a claim's blocks; once per claim."""
        for piece in self._running.pop(claim.number, ()):
            piece.holders.remove(claim.number)

    def _piece_at(self, key: Hashable, lo: int) -> _Piece | None:
        for piece in self._pieces.get(key, ()):
            if piece.lo == lo:
                return piece
        return None

    def _use(self, piece: _Piece, claim: int) -> None:
        """Pin a cached piece for `claim` and make it the most recent."""
        if piece.owner in self._running:  # its owner still runs, and holds it besides claim
            piece.holders.append(piece.owner)
            self._running[piece.owner].append(piece)
        piece.owner = claim
        del self._lru[piece.stamp]
        piece.stamp = next(self._stamps)
        self._lru[piece.stamp] = piece

    def _cut(self, piece: _Piece, at: int) -> None:
        """Split off blocks [at, hi) of `piece` as a piece of their own in its LRU place."""
        rest = _Piece(piece.key, at, piece.hi, piece.owner, piece.stamp, list(piece.holders))
        for holder in rest.holders:
            self._running[holder].append(rest)
        piece.hi = at
        piece.stamp = next(self._stamps)  # `_use` moves it on; `rest` takes its place
        self._lru[piece.stamp] = piece
        self._lru[rest.stamp] = rest
        self._pieces[piece.key].append(rest)

    def _new_stretch(self, runs: Sequence[tuple[Hashable, int]], at: int) -> int:
        """How many runs from `at` on have no block cached (nor come twice): a stretch that
        is stored whole, evicting for all of it at once - the blocks block-by-block storing
        would evict, as none of them can be among the victims."""
        seen: set[Hashable] = set()
        end = at
        while end < len(runs) and (key := runs[end][0]) not in self._pieces and key not in seen:
            seen.add(key)
            end += 1
        return end - at

    def _store_new(self, runs: Sequence[tuple[Hashable, int]], claim: int) -> bool:
        """Store `runs` (none cached) for `claim`; False when the cache filled first."""
        room = self._room(sum(n for _, n in runs))
        for key, n in runs:
            self._insert(key, 0, min(n, room), claim)
            if room < n:
                return False
            room -= n
        return True

    def _acquire_run(self, key: Hashable, n: int, claim: int) -> bool:
        """Blocks 0..n-1 of `key`, cached pieces and missing ones in turn; False when the
        cache filled first."""
        at = 0
        while at < n:
            piece = self._piece_at(key, at)
            if piece is not None:
                if piece.hi > n:
                    self._cut(piece, n)
                self._use(piece, claim)
                at = piece.hi
                continue
            end = min((p.lo for p in self._pieces.get(key, ()) if p.lo > at), default=n)
            end = min(end, n)
            room = self._room(end - at)
            self._insert(key, at, at + room, claim)
            if at + room < end:
                return False
            at = end
        return True

    def _room(self, blocks: int) -> int:
        """How many of `blocks` new blocks fit, evicting the least recently used unpinned
        blocks they need."""
        wanted = blocks - (self.capacity - self._size)
        return blocks if wanted <= 0 else blocks - wanted + self._evict(wanted)

    def _insert(self, key: Hashable, lo: int, hi: int, claim: int) -> None:
        if hi > lo:
            piece = _Piece(key, lo, hi, claim, next(self._stamps), [])
            self._lru[piece.stamp] = piece
            self._pieces.setdefault(key, []).append(piece)
            self._size += hi - lo

    def _evict(self, wanted: int) -> int:
        """Evict up to `wanted` blocks, oldest unpinned first; returns how many."""
        victims: list[_Piece] = []
        found = 0
        running = self._running
        for piece in self._lru.values():
            if found >= wanted:
                break
            if piece.owner not in running and not piece.holders:  # not pinned
                victims.append(piece)
                found += piece.hi - piece.lo
        evicted = 0
        for piece in victims:
            take = min(piece.hi - piece.lo, wanted - evicted)
            evicted += take
            if take < piece.hi - piece.lo:  # its oldest blocks only: the rest stays in place
                piece.lo += take
                continue
            del self._lru[piece.stamp]
            pieces = self._pieces[piece.key]
            pieces.remove(piece)
            if not pieces:
                del self._pieces[piece.key]
        self._size -= evicted
        return evicted
