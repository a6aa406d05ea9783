"""Large request bodies go straight back to the OS (glibc only; `llm-picker serve` only).

glibc serves an allocation of 128 KiB or more with its own mmap, and frees it to the OS at
once - until the first such block is freed: then it raises that threshold to the block's size
(up to 32 MiB), and later multi-megabyte bodies (the gRPC message, the joined body, the
decoded prompt, the echo in full-duplex mode) come from the heap, whose pages stay with the
process after the request. Picker RSS grew from 96 MB to 237 MB over 40 requests of ~8 MB
(issue 30); with the threshold fixed at 1 MiB (which also stops the raising), measured through
Envoy with 60 requests of 3-8 MB two at a time: peak 125 MB and 109 MB after, against 182 and
140 (glibc's MALLOC_ARENA_MAX=2 alone: 168 and 145). Allocations under 1 MiB are unchanged.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["LARGE_BYTES", "bound_large_allocations"]

LARGE_BYTES = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def bound_large_allocations() -> bool:
    """Set the process's mmap threshold; False where the C library is not glibc. Not for a
    host's process (LiteLLM's): its allocator is its own."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BYTES))
