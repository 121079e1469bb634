"""Run a real `localstability serve` process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "localstability"]
# Tests and benchmarks never reach the Hugging Face Hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "LOCALSTABILITY_OFFLINE": "true"}


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without LOCALSTABILITY_* settings, offline, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSTABILITY_")}
    return {**env, **OFFLINE_ENV, **extra}


def run_cli(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `localstability ARGS` and capture its output."""
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=cli_env(**env), timeout=600
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"localstability {' '.join(args)} failed:\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its origin, the first API key, its config and log."""

    base_url: str
    key: str
    config: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}", **headers},
            timeout=300,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(config: Path, log_path: Path, timeout: float = 120, **env: str) -> ServerProcess:
    """Start `localstability serve --config CONFIG` and wait until it answers."""
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(**env),
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        try:
            httpx.get(f"{base_url}/v1/engines/list", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server did not start:\n{log_path.read_text()}") from None
            time.sleep(0.2)
    key_file = config.parent / "data" / "admin-key.txt"
    return ServerProcess(base_url, key_file.read_text().strip(), config, process, log_path)
