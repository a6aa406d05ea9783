"""The piece cache of picker/tokens/segments.py: the same ids as encoding the whole text, cold
and warm, for every family; and off where a pre-tokenizer treats the first piece apart."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from picker.tokens import load_tokenizer
from picker.tokens.segments import SegmentEncoder
from picker_bench.tokenizer_dirs import FAMILIES, build_tokenizer_dir, sample_text

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_pieces_give_transformers_ids_as_a_chat_grows(tmp_path: Path,
                                                             family: str) -> None:
    directory = build_tokenizer_dir(tmp_path / family, family)
    mine = load_tokenizer(str(directory))
    oracle = transformers.AutoTokenizer.from_pretrained(str(directory))
    rng = random.Random(family)
    # User text holding a control token and unusual spacing around where the template cuts.
    messages = [{"role": "system", "content": "  " + sample_text(rng, 30) + "\n"},
                {"role": "user", "content": "<|im_end|>x" + sample_text(rng, 40) + "[/INST]"}]
    for turn in range(4):
        for _ in range(2):  # cold, then every piece cached
            assert mine.chat_ids(messages) == oracle.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False), turn
        messages += [{"role": "assistant", "content": sample_text(rng, 30)},
                     {"role": "user", "content": sample_text(rng, 30) + " "}]


def test_off_for_a_first_piece_prefix_where_caching_would_be_wrong(tmp_path: Path) -> None:
    """Mistral's SentencePiece-style pre-tokenizer prefixes only the input's first word: a
    message encoded alone would get the prefix it lacks inside the chat."""
    directory = build_tokenizer_dir(tmp_path / "mistral", "mistral-nemo")
    tokenizer = load_tokenizer(str(directory))
    backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    text = tokenizer.chat_text([{"role": "user", "content": "the weather in Paris"}])
    whole = backend.encode(text, add_special_tokens=False).ids
    pre_tokenizer = json.loads((directory / "tokenizer.json").read_text())["pre_tokenizer"]
    guarded = SegmentEncoder(backend, pre_tokenizer)
    assert not guarded.caching and guarded.encode(text) == whole
    unguarded = SegmentEncoder(backend, None)  # as if the pre-tokenizer were position-free
    assert unguarded.caching and unguarded.encode(text) != whole


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    directory = build_tokenizer_dir(tmp_path / "qwen", "qwen2.5")
    backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    encoder = SegmentEncoder(backend, None, max_pieces=3)
    for i in range(10):
        text = f"<|im_start|>word{i} the<|im_end|>"
        assert encoder.encode(text) == backend.encode(text, add_special_tokens=False).ids
        assert len(encoder) <= 3


class _CountingBackend:
    """The library's tokenizer, counting the texts it is asked to encode."""

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend
        self.calls: list[list[str]] = []

    def get_added_tokens_decoder(self) -> object:
        return self._backend.get_added_tokens_decoder()

    def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> object:
        self.calls.append(list(texts))
        return self._backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)


def test_new_pieces_are_encoded_once_without_offsets(tmp_path: Path) -> None:
    """A piece repeated in the text is encoded once, by the library's ids-only call; the next
    turn encodes only what is new, a chat sent again nothing."""
    directory = build_tokenizer_dir(tmp_path / "qwen", "qwen2.5")
    backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    counting = _CountingBackend(backend)
    encoder = SegmentEncoder(counting, None)
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>a\n"
    assert encoder.encode(text) == backend.encode(text, add_special_tokens=False).ids
    assert counting.calls == [["user\nhi"], ["\n"], ["a\n"]]
    longer = text + "yes<|im_end|>\n<|im_start|>user\nwhy?<|im_end|>\n"
    assert encoder.encode(longer) == backend.encode(longer, add_special_tokens=False).ids
    assert counting.calls[3:] == [["a\nyes"], ["user\nwhy?"]]
    assert encoder.encode(longer) == backend.encode(longer, add_special_tokens=False).ids
    assert len(counting.calls) == 5
