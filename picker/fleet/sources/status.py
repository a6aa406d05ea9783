"""What every discovery source reports: synced once, and why it is not following right now."""

from __future__ import annotations

import logging

__all__ = ["SourceStatus"]


class SourceStatus:
    """Written by the source's own task only; read by readiness and the admin API."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._synced = False
        self._last_error: str | None = None

    @property
    def synced(self) -> bool:
        """The first complete view has been applied."""
        return self._synced

    @property
    def last_error(self) -> str | None:
        """Why the source is not following right now (None when it is)."""
        return self._last_error

    def _failed(self, message: str) -> None:
        """Record a failure, logged once until it changes (a retry loop repeats it)."""
        if message != self._last_error:
            self._log.error("%s", message)
        self._last_error = message
