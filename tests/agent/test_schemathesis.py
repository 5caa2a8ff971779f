"""Property-based requests generated from the app's own OpenAPI schema: no input may cause a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.agent.conftest import bearer


@pytest.mark.slow
def test_no_generated_request_causes_a_server_error(service):
    app, keys = service(rate_limit_per_minute=100_000, max_new_tokens=2)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/api/feedback", "/api/admin/keys"}

    sent = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            for headers in (bearer(keys["admin"]), {}):
                response = case.call(headers=headers)
                sent.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
                if response.status_code >= 400:
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
    assert len(sent) >= 10 * len(operations)
