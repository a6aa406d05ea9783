"""Prefix-cache awareness: block hashing, the index interface and its implementations."""

from picker.prefix.approx import ApproxPrefixIndex
from picker.prefix.blocks import block_hashes, namespace_hash
from picker.prefix.index import PrefixIndex, PrefixMatch, PromptBlocks

__all__ = [
    "ApproxPrefixIndex", "PrefixIndex", "PrefixMatch", "PromptBlocks", "block_hashes",
    "namespace_hash",
]
