"""Fuzz the admin API from its own OpenAPI document, over real HTTP: no input gives a 5xx, and
every answer (status code, content type, body) is one the document declares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from picker_bench.stack import free_port, start_picker
from tests.sim_thread import running_sim

ADMIN_PORT = free_port()


@pytest.fixture(scope="module", autouse=True)
def picker_with_a_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    workdir = Path(tmp_path_factory.mktemp("fuzz"))
    with running_sim(model="m") as sim_url:
        config = {
            "extproc": {"port": free_port()},
            "admin": {"port": ADMIN_PORT},
            "workers": [{"url": sim_url, "id": "w1", "models": ["m"]}],
            # Generated urls point nowhere: fail fast instead of backing off for seconds.
            "discovery": {"attempt_timeout_secs": 0.05, "backoff_initial_secs": 0,
                          "backoff_max_secs": 0},
        }
        proc = start_picker(config, workdir)
        try:
            yield
        finally:
            proc.stop()


def test_every_answer_is_documented_and_none_is_a_server_error(
    picker_with_a_worker: None,
) -> None:
    """Every operation of /openapi.json, with hypothesis-generated inputs (schemathesis).

    Driven by hand rather than through schemathesis' pytest plugin, which does not load under
    pytest 9. Each answer must match the document (status code listed, content type, body
    schema: the error shape included); on top, no 5xx but the one documented (see below).
    """
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{ADMIN_PORT}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=10)
            case.validate_response(response, checks=[
                status_code_conformance, content_type_conformance, response_schema_conformance])
            if response.status_code < 400:
                return
            # Every error has the one documented shape.
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
            # The one 5xx the API documents: a generated url (without models) that points at
            # nothing is a worker that cannot be reached (503 worker_unreachable).
            if response.status_code >= 500:
                assert (response.status_code, error["code"]) == (503, "worker_unreachable"), (
                    case.as_curl_command(), response.text)

        check()
