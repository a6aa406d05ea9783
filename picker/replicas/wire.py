"""Frames on a replica link: 4-byte big-endian length, then one MessagePack array (msgspec).

The accepting replica greets first (`Hello`); the connecting one then only sends `Pick`s. The
links are one-way on purpose: a replica learns its peers' picks on the connections they open
to it, so a peer going away closes what it sent on and nothing else.

Block hashes are Python's salted `hash` (picker/prefix/blocks.py): two replicas mean the
same block by the same number only under the same PYTHONHASHSEED, which the greeting checks
(`hash_probe`) along with the block size.
"""

from __future__ import annotations

import msgspec

from picker.prefix.blocks import block_hashes, namespace_hash

__all__ = ["MAX_BLOCKS", "MAX_FRAME", "VERSION", "Hello", "Pick", "decode_hello",
           "decode_pick", "frame", "hash_probe"]

VERSION = 1
# Leading blocks shared per pick: a prompt's head is what other requests share, and a prefix
# of the chain is still a valid chain. 65536 blocks is 8 MB of prompt at 128 characters.
MAX_BLOCKS = 65536
# Largest frame accepted: MAX_BLOCKS hashes of 9 bytes, the worker id and headers.
MAX_FRAME = 1024 * 1024


class Hello(msgspec.Struct, array_like=True, frozen=True):
    version: int
    replica: int  # random per process: a link to oneself is recognised and left idle
    block_size: int
    hash_probe: int


class Pick(msgspec.Struct, array_like=True, frozen=True):
    """One routing decision of the approximate index, as peers apply it."""

    worker: str
    units: int  # prompt length (characters or tokens): peers' index calibration counts it
    predicted: int  # leading blocks the deciding replica believed cached on `worker`
    hashes: list[int]


_encoder = msgspec.msgpack.Encoder()
_hello = msgspec.msgpack.Decoder(Hello)
_pick = msgspec.msgpack.Decoder(Pick)


def hash_probe() -> int:
    """Equal on two processes only if they hash prompts alike (same PYTHONHASHSEED, same
    hashing code): the block hashing itself, run on a fixed prompt."""
    return block_hashes(namespace_hash("llm-picker/replicas"), "probe", 5)[0]


def frame(message: Hello | Pick) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(4, "big") + body


def decode_hello(body: bytes) -> Hello:
    """Raises msgspec.DecodeError (a ValueError) on anything else."""
    return _hello.decode(body)


def decode_pick(body: bytes) -> Pick:
    pick = _pick.decode(body)
    if len(pick.hashes) > MAX_BLOCKS or pick.units < 0 or pick.predicted < 0:
        raise msgspec.ValidationError("pick out of bounds")
    return pick
