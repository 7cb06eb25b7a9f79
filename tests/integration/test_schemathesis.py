"""Schemathesis against a live server: generated requests for every documented operation; no
5xx, every answer (status, headers, body) matches the OpenAPI schema, and schema-invalid
requests are refused."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Server

EXAMPLES_PER_OPERATION = 30  # x 10 operations: a few hundred requests


@pytest.fixture(scope="module")
def server():
    server = Server("--weights", "weights/rimer-small", "--max-horizon", "512")
    yield server
    server.stop()


def answered(server: Server) -> float:
    """Requests the server has answered (its own counter), other than /metrics."""
    total = 0.0
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith("rimer_http_requests_total{") and 'route="/metrics"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_every_answer_matches_the_schema(server):
    before = answered(server)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # Excluded: "a schema-valid request is accepted". The schema cannot say that a forecast
            # needs one patch of points (the loaded model's patch length, after nulls and gaps
            # are filled), so such a request is a 422 that names the field, as it should be.
            case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])

        check()
    assert answered(server) - before >= 200  # (a few hundred requests were really sent)
