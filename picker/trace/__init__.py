"""Traces of the picker's own traffic: recorded per request (`trace:`), for replays
(picker_bench.replay), and the audit of its predictions against what engines report.

Nothing here holds prompt text: prompts become keyed block hashes (picker.trace.hashing).
"""

from picker.trace.audit import Audited, PredictionAudit
from picker.trace.line import TraceLine, parse_line
from picker.trace.recorder import TraceRecorder
from picker.trace.settings import TraceSettings

__all__ = ["Audited", "PredictionAudit", "TraceLine", "TraceRecorder", "TraceSettings",
           "parse_line"]
