"""LiteLLM adapter: the picker's core as a LiteLLM Router routing strategy.

Importing this package imports litellm (the `litellm` extra); the core never does.
"""

from litellm_plugin.strategy import PickerStrategy
from litellm_plugin.tracking import InFlightTracker

__all__ = ["InFlightTracker", "PickerStrategy"]
