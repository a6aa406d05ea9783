"""Engine-exact tokenization: a model's tokenizer directory, its chat templates rendered as the
engines render them, and the token ids they compute (see tokenizer.py for the sources)."""

from picker.tokens.conversation import MediaPart
from picker.tokens.template import ChatTemplate, ContentFormat, TemplateProblem
from picker.tokens.tokenizer import EngineTokenizer, load_tokenizer

__all__ = ["ChatTemplate", "ContentFormat", "EngineTokenizer", "MediaPart", "TemplateProblem",
           "load_tokenizer"]
