"""Frames on a replica link: 4-byte big-endian length, then one MessagePack array (msgspec).

The accepting replica greets first (`Hello`, with a random challenge); the connecting one
answers with a `Proof` (its own challenge and an HMAC over both under `replicas.secret`); the
acceptor checks it and answers with its own `Proof`, which the connector checks; only then does
the connector send `Pick`s. Each side thus shows the other that it holds the secret, and a
recorded proof is worthless on the next connection (fresh challenges). The links are one-way on
purpose: a replica learns its peers' picks on the connections they open to it, so a peer going
away closes what it sent on and nothing else.

Block hashes are Python's salted `hash` (picker/prefix/blocks.py): two replicas mean the
same block by the same number only under the same PYTHONHASHSEED, which the greeting checks
(`hash_probe`) along with the block size.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec

from picker.prefix.blocks import block_hashes, namespace_hash

__all__ = ["MAX_BLOCKS", "MAX_FRAME", "VERSION", "Hello", "Pick", "Proof", "challenge",
           "decode_hello", "decode_pick", "decode_proof", "frame", "hash_probe", "proof_valid",
           "prove"]

VERSION = 2  # 2: challenge-response authentication (Hello.challenge, Proof)
_CHALLENGE_BYTES = 32
# What each side's MAC says it is, so that one side's proof is never valid as the other's.
_CONNECTOR, _ACCEPTOR = b"llm-picker replica connector", b"llm-picker replica acceptor"
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
    challenge: bytes  # random per connection: the connector's Proof covers it


class Proof(msgspec.Struct, array_like=True, frozen=True):
    """Holding the shared secret, shown over both sides' challenges."""

    challenge: bytes  # the connector's challenge (empty in the acceptor's answer)
    mac: bytes


class Pick(msgspec.Struct, array_like=True, frozen=True):
    """One routing decision of the approximate index, as peers apply it."""

    worker: str
    units: int  # prompt length (characters or tokens): peers' index calibration counts it
    predicted: int  # leading blocks the deciding replica believed cached on `worker`
    hashes: list[int]
    # Prompt tokens `worker` was believed not to hold: its prefill backlog grows by them
    # (picker.fleet.speed.PrefillBacklog.peer_sent). Last and defaulted, so that peers of
    # the same VERSION without it still talk: msgspec fills a missing trailing field of an
    # array_like struct with its default and skips an unknown trailing one.
    uncached: int = 0


_encoder = msgspec.msgpack.Encoder()
_hello = msgspec.msgpack.Decoder(Hello)
_pick = msgspec.msgpack.Decoder(Pick)
_proof = msgspec.msgpack.Decoder(Proof)


def challenge() -> bytes:
    return secrets.token_bytes(_CHALLENGE_BYTES)


def prove(key: bytes, acceptor: bool, acceptor_challenge: bytes,
          connector_challenge: bytes) -> bytes:
    """The MAC one side sends: its role and both challenges under the shared key."""
    role = _ACCEPTOR if acceptor else _CONNECTOR
    return hmac.new(key, b"\0".join((role, acceptor_challenge, connector_challenge)),
                    hashlib.sha256).digest()


def proof_valid(key: bytes, mac: bytes, acceptor: bool, acceptor_challenge: bytes,
                connector_challenge: bytes) -> bool:
    """Constant-time check of the other side's MAC."""
    expected = prove(key, acceptor, acceptor_challenge, connector_challenge)
    return hmac.compare_digest(mac, expected)


def hash_probe() -> int:
    """Equal on two processes only if they hash prompts alike (same PYTHONHASHSEED, same
    hashing code): the block hashing itself, run on a fixed prompt."""
    return block_hashes(namespace_hash("llm-picker/replicas"), "probe", 5)[0]


def frame(message: Hello | Pick | Proof) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(4, "big") + body


def decode_hello(body: bytes) -> Hello:
    """Raises msgspec.DecodeError (a ValueError) on anything else."""
    return _hello.decode(body)


def decode_proof(body: bytes) -> Proof:
    proof = _proof.decode(body)
    if len(proof.challenge) > _CHALLENGE_BYTES or len(proof.mac) > 64:
        raise msgspec.ValidationError("proof out of bounds")
    return proof


def decode_pick(body: bytes) -> Pick:
    pick = _pick.decode(body)
    if len(pick.hashes) > MAX_BLOCKS or min(pick.units, pick.predicted, pick.uncached) < 0:
        raise msgspec.ValidationError("pick out of bounds")
    return pick
