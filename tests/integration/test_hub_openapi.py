"""Schemathesis against the hub's own OpenAPI document: generated requests (valid and
hostile) never get a 5xx, and every answer matches the documented status codes, content
types and schemas. The app runs in-process on a fresh SQLite database.

(Driven through schemathesis' Python API: its pytest plugin does not load under this pytest.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud_sync.app import create_app
from cloud_sync.settings import HubSettings

_APP = create_app(
    HubSettings.create(Path(tempfile.mkdtemp(prefix="fo-schemathesis-")), allow_software_keys=True)
)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _APP)
# no 5xx, and every answer as documented. Not checked: that every schema-valid request is
# accepted (positive_data_acceptance): the hub refuses valid-looking requests on purpose
# (an index past the log's size, an unknown device), with a documented 4xx.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_every_operation_keeps_its_contract(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()
