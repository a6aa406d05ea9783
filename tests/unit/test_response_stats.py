"""Reading TTFT, chunk rate and usage off a response in passing (picker.routing.response_stats)."""

from __future__ import annotations

import pytest

from picker.routing.response_stats import (
    ResponseObserver,
    ResponseSample,
    ResponseStats,
    Usage,
    find_usage,
)


@pytest.mark.parametrize(("tail", "usage"), [
    (b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
     Usage(3, 4, None)),
    (b'data: {"usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": '
     b'{"cached_tokens": 2}}}\n\ndata: [DONE]\n\n', Usage(5, 1, 2)),
    # The last usage wins; `"usage": null` chunks are skipped on the way back.
    (b'data: {"usage": {"prompt_tokens": 1}}\n\ndata: {"usage": {"prompt_tokens": 2}}\n\n'
     b'data: {"usage": null}\n\n', Usage(2, 0, None)),
    (b'data: {"choices": [{"delta": {"content": "the word \\"usage\\""}}]}\n\n', None),
    (b'{"usage": {"prompt_tokens": "many", "completion_tokens": -1}}', Usage(0, 0, None)),
    (b'{"usage": {"prompt_tok', None),  # cut off: nothing rather than a guess
    (b"", None),
    # Anthropic's names (a Messages answer, and a stream's final message_delta).
    (b'{"type":"message","usage":{"input_tokens":7,"output_tokens":3,'
     b'"cache_read_input_tokens":4}}', Usage(7, 3, 4)),
    (b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": 9}}\n\n'
     b'event: message_stop\ndata: {"type": "message_stop"}\n\n', Usage(0, 9, None)),
])
def test_find_usage(tail: bytes, usage: Usage | None) -> None:
    assert find_usage(tail) == usage


def test_observer_times_a_stream_from_the_pick_and_finds_usage_split_across_chunks() -> None:
    observer = ResponseObserver(started=10.0, streamed=True)
    chunks = [b"data: {}\n\n"] * 4 + [b'data: {"usage": {"prompt_', b'tokens": 8}}\n\n',
                                      b"data: [DONE]\n\n"]
    for i, chunk in enumerate(chunks):
        observer.chunk(chunk, 10.5 + i * 0.01)
    observer.chunk(b"", 99.0)  # an empty end-of-stream message is not a chunk
    sample = observer.sample()
    assert sample.ttft_secs == pytest.approx(0.5)
    assert sample.per_chunk_secs == pytest.approx(0.01)
    assert (sample.chunks, sample.usage) == (7, Usage(8, 0, None))


def test_a_json_answer_has_no_ttft() -> None:
    observer = ResponseObserver(started=0.0, streamed=False)
    observer.chunk(b'{"usage": {"completion_tokens": 2}}', 3.0)
    assert observer.sample() == ResponseSample(None, None, 1, Usage(0, 2, None))


def test_stats_are_moving_averages_that_ignore_missing_values() -> None:
    stats = ResponseStats().updated(ResponseSample(1.0, 0.1, 5, None))
    assert (stats.ttft_secs, stats.per_chunk_secs, stats.responses) == (1.0, 0.1, 1)
    stats = stats.updated(ResponseSample(2.0, None, 1, None))
    assert stats.ttft_secs == pytest.approx(1.2) and stats.per_chunk_secs == 0.1
    assert stats.responses == 2


@pytest.mark.parametrize(("last", "complete"), [
    (b"data: [DONE]\n\n", True),
    (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', True),  # Anthropic's end
    (b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n', False),
])
def test_a_stream_is_complete_once_its_last_event_went_by(last: bytes, complete: bool) -> None:
    """A client that hangs up after the stream's last event finished its request."""
    observer = ResponseObserver(started=0.0, streamed=True)
    observer.chunk(b"data: {}\n\n", 1.0)
    observer.chunk(last, 2.0)
    assert observer.complete is complete
