"""Process logging for the commands that serve: the level, and the line format (`log.format`).

json writes one object per line - `ts` (ISO 8601, UTC), `level`, `logger`, `msg`, and `error`
with the traceback when there is one - what log collectors parse without a pattern, and what
the inferencepool chart asks its endpoint picker for (`--zap-encoder json`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from picker.config import LogConfig

__all__ = ["configure_logging"]

_TEXT = "%(asctime)s %(levelname)s %(message)s"


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(settings: LogConfig) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines() if settings.format == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=settings.level, handlers=[handler])
    if settings.level == "INFO":
        # httpx logs every request at INFO: each health check and metrics scrape, several a
        # second, would drown the start-up lines INFO is for (DEBUG still shows them).
        logging.getLogger("httpx").setLevel(logging.WARNING)
