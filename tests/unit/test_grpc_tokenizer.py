"""GetTokenizer's bundle checked and unpacked as SMG's gateway checks it: a fingerprint on the
last chunk that matches, a zip of plain file names, one directory per bundle, a bounded cache."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.fleet.grpc_calls import EngineCalls
from picker.fleet.grpc_tokenizer import KEEP_BUNDLES, fetch_tokenizer
from picker.fleet.worker_spec import ConnectionMode, WorkerSpec

SPEC = WorkerSpec(url="grpc://127.0.0.1:9", connection_mode=ConnectionMode.GRPC)


class Streamed(EngineCalls):
    """GetTokenizer answering with these chunks."""

    def __init__(self, chunks: list[pb.GetTokenizerChunk]) -> None:
        super().__init__()
        self._chunks = chunks

    async def _answer(self) -> AsyncIterator[pb.GetTokenizerChunk]:
        for chunk in self._chunks:
            yield chunk

    def tokenizer_chunks(self, spec: WorkerSpec) -> AsyncIterator[pb.GetTokenizerChunk]:
        return self._answer()


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def chunks(data: bytes, fingerprint: str | None = None) -> list[pb.GetTokenizerChunk]:
    digest = hashlib.sha256(data).hexdigest() if fingerprint is None else fingerprint
    half = len(data) // 2
    return [pb.GetTokenizerChunk(data=data[:half]),
            pb.GetTokenizerChunk(data=data[half:], sha256=digest)]


async def test_the_bundle_is_unpacked_once_under_its_fingerprint(tmp_path: Path) -> None:
    data = zipped({"tokenizer.json": b"{}", "tokenizer_config.json": b"{\"a\": 1}"})
    first = await fetch_tokenizer(Streamed(chunks(data)), SPEC, tmp_path)
    again = await fetch_tokenizer(Streamed(chunks(data)), SPEC, tmp_path)
    assert first == again == tmp_path / hashlib.sha256(data).hexdigest()
    assert (first / "tokenizer_config.json").read_bytes() == b"{\"a\": 1}"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch left behind


@pytest.mark.parametrize(("answer", "message"), [
    (chunks(zipped({"tokenizer.json": b"{}"}), fingerprint=""), "without a final chunk"),
    (chunks(zipped({"tokenizer.json": b"{}"}), fingerprint="00" * 32), "does not match"),
    (chunks(b"not a zip"), "not a zip"),
    (chunks(zipped({"../escape.json": b"{}"})), "not a file name"),
    (chunks(zipped({"sub/tokenizer.json": b"{}"})), "not a file name"),
    (chunks(zipped({f"f{i}": b"" for i in range(51)})), "51 entries"),
    ([], "without a final chunk"),
])
async def test_a_bad_bundle_is_refused_saying_why(
        tmp_path: Path, answer: list[pb.GetTokenizerChunk], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await fetch_tokenizer(Streamed(answer), SPEC, tmp_path)
    assert not [path for path in tmp_path.iterdir() if path.is_dir()]  # nothing half unpacked


async def test_the_cache_keeps_the_most_recent_bundles(tmp_path: Path) -> None:
    fetched = [await fetch_tokenizer(Streamed(chunks(zipped({"tokenizer.json": bytes([i])}))),
                                     SPEC, tmp_path) for i in range(KEEP_BUNDLES + 2)]
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in fetched[-KEEP_BUNDLES:]}
