"""LiteLLM adapter: the picker's core as a LiteLLM Router strategy and as a proxy callback.

Importing this package imports litellm (the `litellm` extra); the core never does.
`proxy_hook` is the instance the proxy's `callbacks: ["litellm_plugin.proxy_hook"]` names: it is
built, and its picker started, on first access (the proxy's start-up), not on import, so SDK
users of PickerStrategy never start a proxy picker.
"""

from typing import Any

from litellm_plugin.proxy import ProxyPicker
from litellm_plugin.strategy import PickerStrategy
from litellm_plugin.tracking import InFlightTracker

__all__ = ["InFlightTracker", "PickerStrategy", "ProxyPicker", "proxy_hook"]

_proxy_hook: ProxyPicker | None = None


def __getattr__(name: str) -> Any:
    """`litellm_plugin.proxy_hook`, made once per process (PEP 562)."""
    global _proxy_hook
    if name != "proxy_hook":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _proxy_hook is None:
        _proxy_hook = ProxyPicker.from_environment()
    return _proxy_hook
