"""Traces of the picker's own traffic: recorded per request (`trace:`), for replays
(picker_bench.replay), and the audit of its predictions against what engines report.

Nothing here holds prompt text: prompts become keyed block hashes (picker.trace.hashing).
"""
