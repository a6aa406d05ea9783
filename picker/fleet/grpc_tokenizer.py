"""Fetch a gRPC engine's tokenizer with GetTokenizer into a local directory the loader reads.

The engine streams its tokenizer files as one zip in chunks, the SHA-256 (hex) of the whole zip
on the last chunk only (common.proto:10-13; the servicer zips the directory's files under their
bare names, smg_grpc_servicer 0.14.1 tokenizer_bundle.py:45-65). As SMG's gateway assembles it
(crates/grpc_client/src/tokenizer_bundle.rs, collect_stream_bundle and validate_zip_archive):
a stream without a final fingerprint, or over 200 MiB, is refused; a zip over 50 entries or
500 MiB unpacked, or naming a path outside its directory, is refused (rs:21-23). Bundles are
unpacked under `<cache>/<sha256>/` by an atomic rename of a scratch directory, so a reader never
sees half a tokenizer and workers of one model share one copy; the cache keeps the
`KEEP_BUNDLES` most recently used.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from picker.fleet.grpc_calls import EngineCalls
from picker.fleet.worker_spec import WorkerSpec

__all__ = ["KEEP_BUNDLES", "default_cache_dir", "fetch_tokenizer"]

MAX_STREAM_BYTES = 200 * 1024 * 1024
MAX_ENTRIES = 50
MAX_UNPACKED_BYTES = 500 * 1024 * 1024
KEEP_BUNDLES = 16
_SCRATCH = ".partial-"


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "llm-picker-tokenizers"


async def fetch_tokenizer(calls: EngineCalls, spec: WorkerSpec, cache_dir: Path) -> Path:
    """The unpacked directory; EngineCallFailed when the call fails, ValueError naming what is
    wrong with the bundle. The caller bounds the time."""
    data = bytearray()
    fingerprint = ""
    async for chunk in calls.tokenizer_chunks(spec):
        data += chunk.data
        fingerprint = chunk.sha256
        if len(data) > MAX_STREAM_BYTES:
            raise ValueError(f"GetTokenizer streamed over {MAX_STREAM_BYTES} bytes")
    if not data or not fingerprint:
        raise ValueError("GetTokenizer ended without a final chunk carrying sha256")
    if hashlib.sha256(data).hexdigest() != fingerprint.lower():
        raise ValueError("GetTokenizer's bundle does not match its sha256")
    return await asyncio.to_thread(_unpack, bytes(data), fingerprint.lower(), cache_dir)


def _unpack(data: bytes, fingerprint: str, cache_dir: Path) -> Path:
    target = cache_dir / fingerprint
    if not target.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH, dir=cache_dir))
        try:
            _extract(data, scratch)
            os.rename(scratch, target)
        except FileExistsError:
            pass  # another fetch of the same bundle won
        except OSError as exc:
            if not target.is_dir():
                raise ValueError(f"cannot unpack the tokenizer into {cache_dir}: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    os.utime(target)
    _evict(cache_dir)
    return target


def _extract(data: bytes, into: Path) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"GetTokenizer's bundle is not a zip: {exc}") from exc
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise ValueError(f"GetTokenizer's zip has {len(entries)} entries, over "
                             f"{MAX_ENTRIES}")
        if sum(entry.file_size for entry in entries) > MAX_UNPACKED_BYTES:
            raise ValueError(f"GetTokenizer's zip unpacks to over {MAX_UNPACKED_BYTES} bytes")
        for entry in entries:
            name = entry.filename
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"GetTokenizer's zip names {name[:100]!r}, not a file name")
            (into / name).write_bytes(archive.read(entry))


def _evict(cache_dir: Path) -> None:
    """Keep the KEEP_BUNDLES most recently used bundles (a loaded tokenizer lives in memory)."""
    bundles = sorted((path for path in cache_dir.iterdir()
                      if path.is_dir() and not path.name.startswith(_SCRATCH)),
                     key=lambda path: path.stat().st_mtime, reverse=True)
    for stale in bundles[KEEP_BUNDLES:]:
        shutil.rmtree(stale, ignore_errors=True)
