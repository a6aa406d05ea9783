"""Prefill/decode disaggregation: the protocols engines speak (pure), and the prefill step."""
