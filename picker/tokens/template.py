"""Chat templates rendered in the Jinja environment transformers renders them in.

vLLM renders a chat with `tokenizer.apply_chat_template(..., tokenize=False)`, so the text the
engine tokenizes is what transformers' renderer produces. That renderer (transformers 5.22.2,
the newest release vLLM 0.34 accepts) is a plain Jinja sandbox with a fixed set of additions,
reproduced here from these facts (utils/chat_template_utils.py):

- `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the
  `loopcontrols` extension and a `{% generation %}` tag that renders its body (L541-L639);
- `raise_exception(message)` raises a TemplateError (L590), `strftime_now(format)` formats the
  local time (L598), `tojson` is `json.dumps` without HTML escaping, `ensure_ascii=False` and the
  indent/separators/sort_keys options (L593), `dict` and `namespace` that refuse underscore
  names (L601-L639);
- the variables: `messages`, `tools`, `documents`, `add_generation_prompt` and the keyword
  arguments, over the tokenizer's named special tokens (`bos_token`, `eos_token`, ...;
  tokenization_utils_base.py L3162: "kwargs overwrite special tokens");
- each message with reasoning under `reasoning_content`, `thinking` or `reasoning` carries it
  under all of them (`_alias_reasoning_fields`, L643-L657).

vLLM also decides from the template's syntax tree whether message content reaches the template
as a string or as a list of parts (vllm 0.34.0 vllm/renderers/hf.py L483-L604,
`_detect_content_format`): `content_format` below follows the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ContentFormat", "TemplateProblem"]

ContentFormat = Literal["string", "openai"]

# Names a message's reasoning travels under; templates read one of them.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class TemplateProblem(ValueError):
    """The template refused the chat (its own raise_exception, or an error while rendering)."""


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _check_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes ({name!r})")


class _TemplateDict:
    """`dict(...)` for templates without handing them the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing the dunder names that lead to interpreter internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature: namespace(self=...)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks;
    rendering keeps the body as it is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


# What `getattr` finds on a plain dict: its type's attributes, nothing else (no __dict__).
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with `message.role` on a plain dict looked up without the AttributeError
    Jinja's `getattr` raises and catches first (jinja2/sandbox.py, SandboxedEnvironment.getattr:
    the attribute, then the item, then undefined). For a name that is not an attribute of
    dict the outcome is the same - the item or undefined - at a third of the cost: templates
    written `message.content` (Qwen's) render ~1/4 faster (`llm-picker bench tokenize`)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True,
                   extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class ChatTemplate:
    """One compiled chat template; parsing happens once, at load."""

    def __init__(self, source: str) -> None:
        env = _environment()
        tree = env.parse(source)  # raises TemplateSyntaxError, reported by the loader
        self.source = source
        self._template = env.from_string(tree)
        self.variables: frozenset[str] = frozenset(jinja2.meta.find_undeclared_variables(tree))
        self.content_format: ContentFormat = (
            "openai" if next(_content_loops(tree), None) is not None else "string")

    def render(self, messages: Sequence[Mapping[str, Any]], *,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True,
               variables: Mapping[str, Any] | None = None) -> str:
        """The prompt text, as `apply_chat_template(..., tokenize=False)` returns it."""
        try:
            return self._template.render(messages=[_alias_reasoning(m) for m in messages],
                                         tools=tools, documents=documents,
                                         add_generation_prompt=add_generation_prompt,
                                         **(variables or {}))
        except Exception as exc:  # vLLM answers any template failure with a 400 (hf.py L925)
            raise TemplateProblem(str(exc) or type(exc).__name__) from exc


def _alias_reasoning(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """A plain loop: per message of every render, a generator cost ~1 us."""
    for key in _REASONING_FIELDS:
        reasoning = message.get(key)
        if reasoning is not None:
            return {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


# --- content format: does the template loop over a message's content? ----------------------


def _names(node: jinja2.nodes.Node, name: str) -> bool:
    """`node` reads the variable `name` (dotted for namespace attributes: `ns.rest`)."""
    if isinstance(node, jinja2.nodes.Name):
        return node.ctx == "load" and node.name == name
    if isinstance(node, jinja2.nodes.Getattr) and "." in name:
        base, _, attr = name.rpartition(".")
        return node.attr == attr and _names(node.node, base)
    return False


def _reads(node: jinja2.nodes.Node, name: str, key: str | None = None) -> bool:
    """`node` is `name` (or `name[key]` / `name.key`), possibly through a filter, a test or a
    slice: `messages | selectattr(...)`, `messages[1:]`."""
    if isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test):
        return node.node is not None and _reads(node.node, name, key)
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
        return _reads(node.node, name, key)
    if key is None:
        return _names(node, name)
    if isinstance(node, jinja2.nodes.Getitem):
        return (_names(node.node, name) and isinstance(node.arg, jinja2.nodes.Const)
                and node.arg.value == key)
    if isinstance(node, jinja2.nodes.Getattr):
        return _names(node.node, name) and node.attr == key
    return False


def _dotted(node: jinja2.nodes.Node) -> str | None:
    if isinstance(node, jinja2.nodes.NSRef):
        return f"{node.name}.{node.attr}"
    parts: list[str] = []
    while isinstance(node, jinja2.nodes.Getattr):
        parts.append(node.attr)
        node = node.node
    if isinstance(node, jinja2.nodes.Name):
        return ".".join([node.name, *reversed(parts)])
    return None


def _aliases(tree: jinja2.nodes.Template, name: str) -> list[str]:
    """`name` and every variable assigned from it, transitively: `loop_messages =
    messages[1:]`, `ns = namespace(rest=messages)`, `ns.rest = messages`."""
    found, pending = [name], [name]
    while pending:
        current = pending.pop()
        for assign in tree.find_all(jinja2.nodes.Assign):
            target, value = assign.target, assign.node
            new: list[str] = []
            if isinstance(target, jinja2.nodes.Name) and _reads(value, current):
                new.append(target.name)
            if (isinstance(target, jinja2.nodes.Name) and isinstance(value, jinja2.nodes.Call)
                    and isinstance(value.node, jinja2.nodes.Name)
                    and value.node.name == "namespace"):
                new += [f"{target.name}.{kw.key}" for kw in value.kwargs
                        if _reads(kw.value, current)]
            elif (isinstance(target, jinja2.nodes.Getattr | jinja2.nodes.NSRef)
                  and _reads(value, current)):
                dotted = _dotted(target)
                new += [dotted] if dotted else []
            for alias in new:
                if alias not in found:
                    found.append(alias)
                    pending.append(alias)
    return found


def _content_loops(tree: jinja2.nodes.Template) -> Iterator[jinja2.nodes.For]:
    """Loops over a message's content: `for part in message['content']`, over a macro
    parameter that is passed a message's content, or over a bare `content` outside macros."""
    sources = _aliases(tree, "messages")
    message_names = {loop.target.name for loop in tree.find_all(jinja2.nodes.For)
                     if isinstance(loop.target, jinja2.nodes.Name)
                     and any(_reads(loop.iter, source) for source in sources)}
    in_macros: set[int] = set()
    content_params: dict[int, set[str]] = {}
    for macro in tree.find_all(jinja2.nodes.Macro):
        params = set()
        arg_names = [arg.name for arg in macro.args]
        for call in tree.find_all(jinja2.nodes.Call):
            if not (isinstance(call.node, jinja2.nodes.Name) and call.node.name == macro.name):
                continue
            for i, arg in enumerate(call.args):
                if i < len(arg_names) and any(_reads(arg, m, "content") for m in message_names):
                    params.add(arg_names[i])
            for kw in call.kwargs:
                if kw.key in arg_names and any(_reads(kw.value, m, "content")
                                               for m in message_names):
                    params.add(kw.key)
        for loop in macro.find_all(jinja2.nodes.For):
            in_macros.add(id(loop))
            if params:
                content_params[id(loop)] = params
    for loop in tree.find_all(jinja2.nodes.For):
        iterated = loop.iter
        over_content = any(_reads(iterated, m, "content") for m in message_names)
        over_param = isinstance(iterated, jinja2.nodes.Name) and (
            iterated.name in content_params.get(id(loop), ())
            or (id(loop) not in in_macros and iterated.name == "content"))
        if over_content or over_param:
            yield loop
