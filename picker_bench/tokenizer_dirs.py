"""Model tokenizer directories built on the spot, for the tokenization tests and benchmark.

Real models' tokenizers are hundreds of megabytes behind a download; what decides whether the
picker's token ids equal the engine's is the same with a small vocabulary: a BPE trained here
with the `tokenizers` library, the model family's special tokens, and its published chat
template (picker_bench/data/chat_templates, sources in SOURCES.md). The directory is laid out as
on the Hub: tokenizer.json plus tokenizer_config.json.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FAMILIES", "Family", "build_tokenizer_dir", "sample_text"]

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"


@dataclass(frozen=True)
class Family:
    """What tells one model family's tokenizer directory from another's."""

    template: str
    special: tuple[str, ...]
    named: dict[str, str]
    # Added tokens only tokenizer_config.json declares (special or not): transformers adds them.
    config_only: dict[str, bool] = field(default_factory=dict)
    # tokenizer.json's post-processor puts the BOS before a completion prompt.
    bos_on_encode: bool = False
    # SentencePiece-style (Metaspace) pre-tokenizer instead of byte-level.
    metaspace: bool = False


FAMILIES: dict[str, Family] = {
    "llama-3.1": Family(
        "llama-3.1.jinja",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, bos_on_encode=True),
    "qwen2.5": Family(
        "qwen2.5.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        config_only={"<tool_call>": False, "</tool_call>": False}),
    "mistral-nemo": Family(
        "mistral-nemo.jinja",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
         "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        bos_on_encode=True, metaspace=True),
    "deepseek-r1": Family(
        "deepseek-r1.jinja",
        ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
         "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
         "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
         "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"),
        {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
        config_only={"<think>": False, "</think>": False}, bos_on_encode=True),
    "qwen2.5-vl": Family(
        "qwen2.5-vl.jinja",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|image_pad|>", "<|video_pad|>"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}

_PROSE = ("the weather in Paris is sunny today and tomorrow it will rain so take an umbrella "
          "what is temperature location unit celsius fahrenheit get_current_temperature "
          "function call result tool you are a helpful assistant answer question please think "
          "step by step about how chat templates turn messages into prompt tokens { } [ ] \" : "
          ", . ? ! 0 1 2 3 4 5 6 7 8 9 name arguments description parameters type object string "
          "properties required Hello how are doing great help show off working")
_WORDS = _PROSE.split()


def sample_text(rng: random.Random, words: int) -> str:
    """Prose over the trained vocabulary (plus a few words it never saw)."""
    chosen = [rng.choice(_WORDS) for _ in range(words)]
    if words > 3:
        chosen[rng.randrange(words)] = "zyxwvq"  # unseen: falls back to bytes
    return " ".join(chosen)


def build_tokenizer_dir(directory: Path, family: str, vocab_size: int = 600) -> Path:
    """Write `family`'s tokenizer directory into `directory` (created) and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    spec = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>" if spec.metaspace else None))
    if spec.metaspace:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet: list[str] = []
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    rng = random.Random(family)
    corpus = [sample_text(rng, 40) for _ in range(300)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(spec.special), initial_alphabet=alphabet,
        show_progress=False))
    bos = spec.named.get("bos_token")
    if spec.bos_on_encode and bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    decoder = {str(tokenizer.token_to_id(t)): _added(t, True) for t in spec.special}
    next_id = tokenizer.get_vocab_size()
    for offset, (text, special) in enumerate(spec.config_only.items()):
        decoder[str(next_id + offset)] = _added(text, special)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": decoder,
              "add_bos_token": spec.bos_on_encode, "model_max_length": 131072, **spec.named,
              "chat_template": (TEMPLATES / spec.template).read_text(encoding="utf-8")}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False,
                                                                indent=1), encoding="utf-8")
    return directory


def _added(text: str, special: bool) -> dict[str, object]:
    return {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}
