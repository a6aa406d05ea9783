"""A tokenizer.json equal to the simulator's toy tokenizer.

The KV-event index matches prompts on the engines' token ids, so a picker in front of sims needs
a tokenizer that yields the sims' ids; an in-process hf file does that without a model download
or an HTTP round trip to a sim's /tokenize.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from picker_sim.engine import token_ids

__all__ = ["write_hf_twin"]


def write_hf_twin(words: Iterable[str], directory: Path) -> dict[str, str]:
    """`prefix.tokenizer` settings (kind hf) giving the sims' ids for these words, with a chat
    template joining messages as the sims do ("role content ..."); other words are [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # The vocabulary goes into the JSON, not through Tokenizer.save: with 32-bit ids, saving
    # took 54 s and 16 GB here (measured with tokenizers 0.23 on 1,000 words); loading is fast.
    data = json.loads(tokenizer.to_str())
    vocab = sorted(set(words))
    data["model"]["vocab"] |= dict(zip(vocab, token_ids(vocab), strict=True))
    path, template = directory / "sim-tokenizer.json", directory / "sim-chat-template.jinja"
    path.write_text(json.dumps(data))
    template.write_text("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
                        "{% endfor %}")
    return {"kind": "hf", "path": str(path), "chat_template": str(template)}
