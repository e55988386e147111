"""Fuzz the service's OpenAPI schema (in-process ASGI): no input may cause a 500."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from pocsdk.server.service import ServiceConfig, create_app  # noqa: E402

KEY = "fuzz-key"
app = create_app(ServiceConfig(compressors=["extractive", "skim"], api_key=KEY, max_body_bytes=256 * 1024,
                               batch_window_ms=1.0, request_timeout_s=20))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=[not_a_server_error])


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_without_auth(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500 or response.status_code == 501
