"""Run a real `localstability serve` process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "localstability"]
# Tests and benchmarks never reach the Hugging Face Hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "LOCALSTABILITY_OFFLINE": "true"}


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without LOCALSTABILITY_* settings, offline, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSTABILITY_")}
    return {**env, **OFFLINE_ENV, **extra}


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `localstability ARGS` with `env` and `extra` settings and capture its output."""
    result = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=cli_env(**(env or {}), **extra),
        timeout=600,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"localstability {' '.join(args)} failed:\n{result.stderr}")
    return result


def terminate(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    env: dict[str, str] = field(default_factory=dict)  # the settings it was started with

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.key}", **headers},
            timeout=300,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process)


def start_server(
    config: Path,
    log_path: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    **extra: str,
) -> ServerProcess:
    """Start `localstability serve --config CONFIG` (behind `prefix`, a command such as
    `unshare ...`) and wait until it answers."""
    env = {**(env or {}), **extra}
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*prefix, *CLI, "serve", "--config", str(config), "--port", str(port)],
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
    data_dir = Path(env.get("LOCALSTABILITY_DATA_DIR", config.parent / "data"))
    key_file = data_dir / "admin-key.txt"
    return ServerProcess(base_url, key_file.read_text().strip(), config, process, log_path, env)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: run scripts/setup-services.sh")
    return str(candidates[-1])


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port (tests and benchmarks)."""

    url: str
    data_dir: Path
    run_as: list[str]

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.url.replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, _postgres_bin("pg_ctl"), "stop", "-m", "fast", "-D", str(self.data_dir)],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a new temporary folder: 127.0.0.1 only, durability off.

    As root the server runs as the `postgres` user (PostgreSQL refuses root), so the folder
    is made under the system's temporary folder, which that user can reach.
    """
    directory = Path(tempfile.mkdtemp(prefix="localstability-pg-"))
    data_dir, socket_dir = directory / "pgdata", directory / "pgsocket"
    data_dir.mkdir(parents=True)
    socket_dir.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        for path in (directory, data_dir, socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *run_as,
            _postgres_bin("initdb"),
            "-D",
            str(data_dir),
            "-A",
            "trust",
            "-U",
            "localstability",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={socket_dir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        [
            *run_as,
            _postgres_bin("pg_ctl"),
            "start",
            "-w",
            "-D",
            str(data_dir),
            "-l",
            str(directory / "postgres.log"),
            "-o",
            options,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    url = f"postgresql+psycopg://localstability@127.0.0.1:{port}/postgres"
    return PostgresServer(url=url, data_dir=data_dir, run_as=run_as)


@dataclass
class RedisServer:
    """A throwaway Redis on a loopback port, no persistence (tests and benchmarks)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def stop(self) -> None:
        terminate(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self, while_down: Callable[[], object] = lambda: None) -> None:
        """Stop it, call `while_down`, and start a new one on the same port, without the old
        one's data."""
        self.stop()
        while_down()
        fresh = start_redis(self.port)
        self.process, self.directory = fresh.process, fresh.directory


def start_redis(port: int | None = None, timeout: float = 30) -> RedisServer:
    """redis-server on 127.0.0.1 (installed by scripts/setup-services.sh), ready to PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run scripts/setup-services.sh")
    port = port or free_port()
    directory = Path(tempfile.mkdtemp(prefix="localstability-redis-"))
    process = subprocess.Popen(
        [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--protected-mode", "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.02)
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, process, directory)


@dataclass
class WorkerProcess:
    """A running `localstability worker` (in a process group of its own) and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str  # its own /metrics (worker_metrics_port)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM (a warm shutdown: the job in hand finishes), then SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(
    config: Path, log_path: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> WorkerProcess:
    """Start `localstability worker --config CONFIG ARGS` (its metrics on a free loopback
    port) and wait until it consumes."""
    port = free_port()
    env = {**env, "LOCALSTABILITY_WORKER_METRICS_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*CLI, "worker", "--config", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cli_env(**env),
            start_new_session=True,
        )
    worker = WorkerProcess(process, log_path, f"http://127.0.0.1:{port}/metrics")
    deadline = time.monotonic() + timeout
    # Ours says "worker ready"; Celery's consumer then logs "ready." once it takes messages.
    while "worker ready" not in (logs := worker.logs()) or "ready." not in logs:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{logs}")
        if time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"worker not ready:\n{logs}")
        time.sleep(0.1)
    return worker
