"""Shared fixtures: tiny models built offline, and a real server process serving them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "localstability"]
# Tests never reach the Hugging Face Hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "LOCALSTABILITY_OFFLINE": "true"}


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSTABILITY_")}
    return {**env, **OFFLINE_ENV, **extra}


def run_cli(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=cli_env(**env), timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"localstability {' '.join(args)} failed:\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    key: str
    config: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def origin(self) -> str:
        return self.base_url

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}", **headers},
            timeout=300,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight SD1, SD2 and SDXL pipelines and their config (built in seconds)."""
    directory = tmp_path_factory.mktemp("tiny")
    run_cli("models", "make-tiny", str(directory))
    return directory


def start_server(config: Path, log_path: Path, **env: str) -> Server:
    port = free_port()
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [*CLI, "serve", "--config", str(config), "--port", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=cli_env(**env),
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited:\n{log_path.read_text()}")
        try:
            httpx.get(f"{base_url}/v1/engines/list", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        process.kill()
        raise AssertionError(f"server did not start:\n{log_path.read_text()}")
    key_file = config.parent / "data" / "admin-key.txt"
    return Server(base_url, key_file.read_text().strip(), config, process, log_path)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tiny_dir: Path) -> Iterator[Server]:
    """`localstability serve` on a free loopback port with the tiny models."""
    running = start_server(tiny_dir / "localstability.toml", tiny_dir / "server.log")
    yield running
    stop_server(running)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http
