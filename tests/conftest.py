"""Shared fixtures. One real service process (with its in-process vLLM engine) per test session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.demo import DemoData
from tests.procs import ServerProcess, start_service


@pytest.fixture(scope="session")
def demo() -> DemoData:
    return DemoData()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def service(log_dir) -> Iterator[ServerProcess]:
    """`r2rank-serve` on the shipped default model with the local vLLM engine."""
    server = start_service(log_dir)
    server.wait_ready("/readyz")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(service: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=300.0) as http:
        yield http
