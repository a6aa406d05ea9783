"""LiteLLM adapter: the picker's core as a LiteLLM routing strategy and proxy callback.

Not implemented yet (tracked as its own issue); the package exists so the distribution's layout
is final. Nothing here is imported by the core or by the Envoy adapter.
"""
