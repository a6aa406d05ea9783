"""How a decoded JSON value is named back to whoever sent it, in error messages of the request
parser and of the admin API alike. No dependency: the admin API loads without the parser's
msgspec."""

from __future__ import annotations

__all__ = ["json_type"]


def json_type(value: object) -> str:
    """How a decoded JSON value is named back to its sender: "an array", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a Python {type(value).__name__}"  # request_from_data given a non-JSON value
