"""What the gRPC sim knows of its model's tokenizer: the ids it answers with, and its facts.

A gRPC engine works in token ids: the gateway detokenizes what it streams back. So the sim's
output ids must belong to the tokenizer the gateway loaded, or the answer decodes to nonsense.
Given a tokenizer directory (tokenizer.json and, optionally, tokenizer_config.json), the sim
answers with its words encoded by that tokenizer (or with a given text, once, as a model whose
output a test fixes: a tool call, a reasoning block); without one, with the toy ids the HTTP
sim's /tokenize returns (picker_sim.engine.token_ids).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picker_sim.engine import WORDS, token_ids

__all__ = ["SimVocabulary"]

# A vocabulary the toy ids could come from: 32-bit crc32 values (picker_sim.engine.token_ids).
_TOY_VOCAB = 1 << 32


@dataclass(frozen=True, slots=True)
class SimVocabulary:
    """The ids the sim generates, cycled, and what GetModelInfo reports of the tokenizer."""

    output_ids: tuple[int, ...]
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int = 0
    directory: Path | None = None
    # The directory's files as one zip, what GetTokenizer streams: read once at start-up, as
    # the servicer builds its archive once and serves it from memory
    # (smg_grpc_servicer tokenizer_bundle.py:67-80), so the directory may go afterwards.
    bundle: bytes | None = None
    # The output ids are one whole answer (a fixed text): it ends after them with "stop".
    whole: bool = False

    @classmethod
    def toy(cls) -> SimVocabulary:
        return cls(tuple(token_ids(WORDS)), _TOY_VOCAB)

    @classmethod
    def from_directory(cls, directory: Path, text: str | None = None) -> SimVocabulary:
        """Read `directory` as an engine loads a tokenizer; a bad directory is a ValueError
        naming the file. `text`: the answer, encoded, instead of the sim's words cycled."""
        from tokenizers import Tokenizer

        path = directory / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception for a bad file
            raise ValueError(f"tokenizer: cannot load {path}: {exc}"[:300]) from exc
        output = tokenizer.encode(" ".join(WORDS) if text is None else text,
                                  add_special_tokens=False).ids
        if not output:
            raise ValueError(f"tokenizer: {path} encodes the sim's words to no token")
        config = _json_object(directory / "tokenizer_config.json")

        def special(name: str) -> int | None:
            token = config.get(name)
            if isinstance(token, dict):  # {"content": "<s>", ...}, as transformers saves it
                token = token.get("content")
            return tokenizer.token_to_id(token) if isinstance(token, str) else None

        eos, bos = special("eos_token"), special("bos_token")
        return cls(tuple(output), tokenizer.get_vocab_size(with_added_tokens=True),
                   () if eos is None else (eos,), bos or 0, directory, _zip(directory),
                   text is not None)

    def token(self, index: int) -> int:
        return self.output_ids[index % len(self.output_ids)]


def _zip(directory: Path) -> bytes:
    """Every file of the directory at the archive's top level, as the servicer zips the
    tokenizer files (smg_grpc_servicer tokenizer_bundle.py:29-65)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.iterdir()):
            if path.is_file():
                archive.write(path, path.name)
    return buffer.getvalue()


def _json_object(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer: cannot read {path}: {exc}"[:300]) from exc
    if not isinstance(data, dict):
        raise ValueError(f"tokenizer: {path} is not a JSON object")
    return data
