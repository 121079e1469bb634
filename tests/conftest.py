"""Shared fixtures: tiny models built offline, and a real server process serving them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localstability.testing import ServerProcess, run_cli, start_server

REPO = Path(__file__).resolve().parents[1]
Server = ServerProcess

__all__ = ["REPO", "Server", "run_cli"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight SD1, SD2 and SDXL pipelines and their config (built in seconds)."""
    directory = tmp_path_factory.mktemp("tiny")
    run_cli("models", "make-tiny", str(directory))
    return directory


@pytest.fixture(scope="session")
def server(tiny_dir: Path) -> Iterator[Server]:
    """`localstability serve` on a free loopback port with the tiny models."""
    running = start_server(tiny_dir / "localstability.toml", tiny_dir / "server.log")
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http
