"""LiteLLM adapter: the picker's core as a LiteLLM Router strategy and as a proxy callback.

Importing this package imports litellm (the `litellm` extra); the core never does.
`proxy_hook` is the instance the proxy's `callbacks: ["litellm_plugin.proxy_hook"]` names.
"""

from litellm_plugin.proxy import ProxyPicker
from litellm_plugin.strategy import PickerStrategy
from litellm_plugin.tracking import InFlightTracker

__all__ = ["InFlightTracker", "PickerStrategy", "ProxyPicker", "proxy_hook"]

proxy_hook = ProxyPicker()
