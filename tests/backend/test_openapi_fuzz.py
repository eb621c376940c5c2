"""Schemathesis against the live backend's OpenAPI: no generated request may cause a server error.

The backend runs as a real process (uvicorn, SQLite, the embedded broker); requests carry an admin
token so that the handlers behind the role checks are exercised too. Bounded: a few examples per
operation, a few hundred requests in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from backend.broker import free_port
from tests.backend.conftest import wait_healthy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    port, broker = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "--database",
            f"sqlite+aiosqlite:///{db}",
            "--embedded-broker",
            str(broker),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "FAREGATE_LOGIN_ATTEMPTS_PER_MINUTE": "1000"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        token = httpx.post(
            f"{url}/api/v1/login", json={"username": "admin", "password": "changethis"}, timeout=10
        ).json()["access_token"]
        yield url, token
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def api_schema(server: tuple[str, str]) -> schemathesis.BaseSchema:
    url, _ = server
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_request_causes_a_server_error(case: schemathesis.Case, server: tuple[str, str]) -> None:
    url, token = server
    if case.path in ("/api/v1/logout",):
        return  # would revoke the token every other example needs
    case.call_and_validate(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
    )
