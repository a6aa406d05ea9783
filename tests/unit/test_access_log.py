"""picker.observe.access_log: one bare JSON line per request (item 11)."""

from __future__ import annotations

import io
import json

from picker.observe.access_log import AccessEntry, AccessLog

ENTRY = AccessEntry(request_id="r1", model="m" * 500, policy="least_load", worker="w",
                    match=0.823456, outcome="completed", status=200, duration_ms=12.3456)


def test_one_json_line_with_bounded_fields() -> None:
    out = io.StringIO()
    AccessLog(out).record(ENTRY)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    fields = json.loads(line)
    assert fields["model"] == "m" * 256 + "...[+244 chars]" and fields["duration_ms"] == 12.35
    assert fields["worker"] == "w" and fields["status"] == 200
    assert fields["policy"] == "least_load" and fields["match"] == 0.8235


def test_two_logs_do_not_share_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    AccessLog(first)
    AccessLog(second).record(ENTRY)
    assert first.getvalue() == "" and second.getvalue()


def test_client_chosen_fields_are_capped_with_a_marker() -> None:
    """Issue 30 item 14: a 5 KB x-request-id and a 10 KB x-routing-strategy were logged whole."""
    out = io.StringIO()
    AccessLog(out).record(AccessEntry(
        request_id="r" * 5000, model="m", policy="p" * 10_000, worker=None, match=None,
        outcome="rejected", status=400, duration_ms=1.0))
    fields = json.loads(out.getvalue())
    assert fields["request_id"] == "r" * 256 + "...[+4744 chars]"
    assert fields["policy"] == "p" * 256 + "...[+9744 chars]"
    assert len(out.getvalue()) < 1000
