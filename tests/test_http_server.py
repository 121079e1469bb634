"""The HTTP server layer against hostile and impatient clients, through real sockets: the
header timeout (half-sent requests, slowloris), the connection cap, a log that a flood can't
fill, and a SIGTERM that drains (new generations get `503 shutting_down` while running ones
finish and can still be read) before the server closes.

Each server here is one of its own (small limits, or it gets stopped). No test asserts how
fast anything is: every wait has a deadline only so that a broken server fails instead of
hanging the run.
"""

from __future__ import annotations

import json
import logging
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localstability.logs import RateLimitFilter, configure_logging, install_rate_limit
from localstability.testing import ServerProcess, cli_env
from tests.conftest import Deployment, log_records, start_deployment
from tests.helpers import t2i_body
from tests.test_accounts_engines import assert_envelope

HEADER_TIMEOUT_S = 1.0
HANG_GUARD_S = 20.0  # the longest any read here waits for the server
HALF_SENT = b"GET /v1/user/balance HTTP/1.1\r\nHo"
SD1 = "/v1/generation/stable-diffusion-v1-6/text-to-image"
ASYNC = {"Prefer": "respond-async"}
# Tiny SD 1.x at 512x512, 50 steps: seconds each on a CPU, long enough to be running while
# the server drains.
LONG = t2i_body(steps=50, width=512, height=512)


# --- raw sockets -----------------------------------------------------------------------------


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: ServerProcess, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address(server), timeout=HANG_GUARD_S)
    if send:
        sock.sendall(send)
    return sock


def read_until_closed(sock: socket.socket, guard_s: float = HANG_GUARD_S) -> bytes:
    """Everything the server sends until it closes the connection (fails on the guard)."""
    deadline = time.monotonic() + guard_s
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the server did not close the connection; got {received!r}"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            continue
        if not chunk:
            return received
        received += chunk


def parse_response(raw: bytes) -> httpx.Response:
    """The first HTTP/1.1 response in `raw` (with a Content-Length)."""
    head, separator, rest = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete response: {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int({k.lower(): v for k, v in headers.items()}["content-length"])
    assert len(rest) >= length, f"a cut response: {raw!r}"
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=rest[:length])


def response_length(raw: bytes) -> int | None:
    """The byte length of the first response in `raw`, once all of it is there."""
    head, separator, _ = raw.partition(b"\r\n\r\n")
    if not separator:
        return None
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            total = len(head) + 4 + int(value)
            return total if len(raw) >= total else None
    return None


def balance_request(server: ServerProcess) -> bytes:
    return (
        "GET /v1/user/balance HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {server.key}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    """One whole response, leaving the connection open."""
    raw = b""
    while response_length(raw) is None:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {raw!r}"
        raw += chunk
    return raw


def trickle(sock: socket.socket, head: bytes, every_s: float = 0.3) -> tuple[bytes, int]:
    """Slowloris: send `head` and then one more header byte every `every_s`, for ever, until
    the server answers or closes; what it sent back, and how many bytes were trickled."""
    deadline = time.monotonic() + HANG_GUARD_S
    sock.sendall(head)
    sent = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return read_until_closed(sock), sent
        try:
            sock.send(b"a")
        except OSError:  # closed between the select and the send
            return read_until_closed(sock), sent
        sent += 1
    raise AssertionError(f"a slowloris was never cut off ({sent} bytes trickled)")


def lines_of(server: ServerProcess, logger: str) -> list[dict[str, Any]]:
    return [r for r in log_records(server) if r.get("logger") == logger]


# --- header timeout --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Deployment:
    """A server with a 1 s header timeout and room for the connections the tests open."""
    return start_deployment(
        tiny_dir,
        tmp_path_factory.mktemp("http_guarded"),
        "sqlite",
        request,
        LOCALSTABILITY_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        LOCALSTABILITY_MAX_CONNECTIONS="300",
        LOCALSTABILITY_RATE_LIMIT_REQUESTS="0",
    )


def test_half_sent_requests_are_closed_after_the_header_timeout(guarded: Deployment) -> None:
    """200 connections that each send part of a request line and headers, then nothing: the
    server answers each `408 request_timeout` and closes it once the header timeout is up,
    and serves a normal request meanwhile. The log doesn't get a line per connection."""
    server = guarded.server
    sockets = [connect(server, HALF_SENT) for _ in range(200)]
    last_opened = time.monotonic()
    try:
        with server.client() as client:
            assert client.get("/v1/user/balance").status_code == 200
        answers = [read_until_closed(sock) for sock in sockets]
        # All were closed by then; the guard is only there so that the test can't hang.
        assert time.monotonic() - last_opened < HEADER_TIMEOUT_S + 10
    finally:
        for sock in sockets:
            sock.close()
    for raw in answers:
        response = parse_response(raw)
        assert_envelope(response, 408, "request_timeout")
        assert response.headers["connection"] == "close"
    timed_out = [
        r
        for r in lines_of(server, "localstability.api.http11")
        if r["message"].startswith("request head timed out")
    ]
    assert 1 <= len(timed_out) <= 10, len(timed_out)  # 200 connections, a few lines


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(guarded: Deployment) -> None:
    with connect(guarded.server) as sock:
        assert read_until_closed(sock) == b""


@pytest.mark.parametrize("kept_alive", [False, True], ids=["new connection", "kept alive"])
def test_a_slowloris_is_cut_off_after_the_header_timeout(
    guarded: Deployment, kept_alive: bool
) -> None:
    """A client that trickles a header byte every 0.3 s never finishes its request: the bytes
    don't restart the clock, so the header timeout closes it all the same. On a kept-alive
    connection, the clock starts with the next request's first byte."""
    server = guarded.server
    with connect(server) as sock:
        if kept_alive:
            sock.sendall(balance_request(server))
            assert parse_response(read_response(sock)).status_code == 200
        head = b"GET /v1/user/balance HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
        answer, trickled = trickle(sock, head)
    assert_envelope(parse_response(answer), 408, "request_timeout")
    assert trickled >= 2  # bytes kept coming, and the timeout still came


def test_a_complete_request_after_a_pause_is_served(guarded: Deployment) -> None:
    """The timeout is on a request's head, not on a connection's life: a kept-alive connection
    that waits longer than the header timeout (less than the keep-alive one) and then sends a
    whole request is served on the same connection."""
    server = guarded.server
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(balance_request(server))
            assert parse_response(read_response(sock)).status_code == 200
            time.sleep(HEADER_TIMEOUT_S * 1.5)


# --- the connection cap ----------------------------------------------------------------------


def test_connections_over_the_cap_get_503_and_never_reach_the_app(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    capped = start_deployment(
        tiny_dir,
        tmp_path / "capped",
        "sqlite",
        request,
        LOCALSTABILITY_MAX_CONNECTIONS="20",
        LOCALSTABILITY_HEADER_TIMEOUT_S="60",  # the held connections stay for the test
    )
    server = capped.server

    def balance_requests() -> list[dict[str, Any]]:
        # Every refused connection asked for the balance; the start-up's own readiness polls
        # (whose log lines may land late) asked for other paths.
        return [
            r
            for r in log_records(server)
            if r.get("message") == "request" and r.get("path") == "/v1/user/balance"
        ]

    requests_before = len(balance_requests())
    held = [connect(server, HALF_SENT) for _ in range(20)]
    refused = 0
    try:
        for _ in range(30):  # one beyond the cap at a time, sending nothing or a request
            with connect(server, b"" if refused % 2 else HALF_SENT) as sock:
                response = parse_response(read_until_closed(sock))
            refused += 1
            assert_envelope(response, 503, "server_busy")
            assert response.headers["connection"] == "close"
            assert int(response.headers["retry-after"]) >= 1
        with server.client() as client:
            assert_envelope(client.get("/v1/user/balance"), 503, "server_busy")
            refused += 1
    finally:
        for sock in held:
            sock.close()
    # Once the held connections are gone, requests are served again.
    deadline = time.monotonic() + HANG_GUARD_S
    with server.client() as client:
        while (status := client.get("/v1/user/balance").status_code) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.1)
    # None of the refused connections reached the app (its request log), one request did.
    requests = balance_requests()
    assert len(requests) - requests_before == 1, requests[requests_before:]
    # The log says so a few times, then sums up (at the latest when the server stops).
    server.stop()
    lines = lines_of(server, "localstability.api.http11")
    shown = [r for r in lines if r["message"].startswith("connection refused")]
    summed = sum(
        r["suppressed"]
        for r in lines
        if r.get("suppressed_message", "").startswith("connection refused")
    )
    assert len(shown) <= 10 and len(shown) + summed >= refused, (len(shown), summed, refused)


def test_the_cap_fits_the_open_file_limit(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Under a low hard RLIMIT_NOFILE the server lowers its connection cap to leave room for
    the rest of the process, so a flood gets 503s, never EMFILE on accept."""
    from localstability.testing import CLI, free_port

    config_dir = tmp_path / "low-limit"
    config_dir.mkdir()
    config = config_dir / "localstability.toml"
    config.write_text((tiny_dir / "localstability.toml").read_text())
    port = free_port()

    def low_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (256 + 64, 256 + 64))

    log_path = config_dir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(LOCALSTABILITY_DATA_DIR=str(config_dir / "data")),
            preexec_fn=low_limit,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", "", config, process, log_path)
    request.addfinalizer(server.stop)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, server.logs()
        try:
            httpx.get(f"{server.base_url}/v1/engines/list", timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.2)
    [lowered] = [r for r in log_records(server) if r["message"].startswith("max_connections")]
    cap = lowered["cap"]
    assert 1 <= cap < 1000
    sockets = [connect(server, HALF_SENT) for _ in range(cap + 100)]
    try:
        busy = [parse_response(read_until_closed(sock)) for sock in sockets[cap:]]
    finally:
        for sock in sockets:
            sock.close()
    for response in busy:
        assert_envelope(response, 503, "server_busy")
    assert "out of system resource" not in server.logs()


# --- the log under a flood -------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger("localstability.test.flood")
    handler = Collect()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, handler
    logger.removeHandler(handler)
    logger.filters.clear()


def test_repeated_records_are_rate_limited_and_summed_up(
    collected: tuple[logging.Logger, Collect],
) -> None:
    logger, handler = collected
    limiter = install_rate_limit(
        ("localstability.test.flood",), RateLimitFilter(burst=3, interval_s=2.0)
    )
    for i in range(2_000):
        # Like asyncio's handler: the same first line, a different repr after it.
        logger.error("socket.accept() out of system resource\nsocket: <fd=%d>", i)
    logger.warning("another message")
    assert [r.getMessage().split("\n")[0] for r in handler.records] == [
        "socket.accept() out of system resource"
    ] * 3 + ["another message"]
    deadline = time.monotonic() + HANG_GUARD_S
    while len(handler.records) < 5:  # the summary comes at the interval's end, by itself
        assert time.monotonic() < deadline
        time.sleep(0.05)
    summary = handler.records[4]
    assert summary.levelno == logging.ERROR
    assert summary.suppressed == 1_997  # type: ignore[attr-defined]
    assert "1997" in summary.getMessage()
    # A new interval lets records through again.
    logger.error("socket.accept() out of system resource\nsocket: <fd=0>")
    assert len(handler.records) == 6
    limiter.flush_all()
    assert len(handler.records) == 6  # nothing held back


EMFILE_SCRIPT = textwrap.dedent(
    """
    import asyncio, resource, sys
    from localstability.logs import configure_logging, flush_rate_limits

    configure_logging("INFO", True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
    held = []

    class Hold(asyncio.Protocol):
        def connection_made(self, transport):
            held.append(transport)

    async def main():
        server = await asyncio.get_running_loop().create_server(Hold, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(float(sys.argv[1]))

    asyncio.run(main())
    flush_rate_limits()  # as the server does when it stops
    """
)


def test_an_event_loop_out_of_descriptors_does_not_flood_the_log() -> None:
    """asyncio retries accept() on EMFILE and logs every failure (hundreds a second, with a
    traceback each); with the server's logging set up, a few lines get through and the rest
    are counted. A real asyncio server in a process of its own, at 48 descriptors."""
    process = subprocess.Popen(
        [sys.executable, "-c", EMFILE_SCRIPT, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    clients = []
    try:
        for _ in range(120):  # more than the process can accept; the backlog holds the rest
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        _, stderr = process.communicate(timeout=60)
    finally:
        for client in clients:
            client.close()
        process.kill()
    records = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    resource_lines = [r for r in records if "out of system resource" in r["message"]]
    shown = [r for r in resource_lines if "suppressed" not in r]
    summed = sum(r.get("suppressed", 0) for r in resource_lines)
    assert 1 <= len(shown) <= 5, len(shown)
    assert summed > 0  # the loop did fail more often than the log shows
    assert len(stderr) < 64 * 1024, len(stderr)


def test_configure_logging_limits_asyncio_and_uvicorn() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    limiter = configure_logging("INFO", True)
    try:
        for name in ("asyncio", "uvicorn.error"):
            assert limiter in logging.getLogger(name).filters
        # The application's own records are never dropped (an error's line carries its id).
        assert limiter not in logging.getLogger("localstability.errors").filters
    finally:
        for name in ("asyncio", "uvicorn", "uvicorn.error", "localstability.api.http11"):
            logging.getLogger(name).removeFilter(limiter)
        root.handlers[:] = handlers
        root.setLevel(level)


# --- SIGTERM: drain, then stop ---------------------------------------------------------------


def running(client: httpx.Client, generation_id: str) -> None:
    """Wait until the generation is running (its pipeline loaded, a step done)."""
    deadline = time.monotonic() + 300  # the first job loads the pipeline
    while True:
        body = client.get(f"/v1/generation/{generation_id}").json()
        if body.get("status") == "running" and body["progress"]["step"] >= 1:
            return
        assert body.get("status") in ("queued", "running"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def wait_for_log(server: ServerProcess, message: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not any(r.get("message") == message for r in log_records(server)):
        assert server.process.poll() is None, server.logs()
        assert time.monotonic() < deadline, f"no {message!r} in the log"
        time.sleep(0.02)


def test_sigterm_drains_while_serving(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On SIGTERM the server keeps listening: a new generation gets `503 shutting_down` (not
    "connection refused"), the running and queued generations can still be read, a sync
    request waiting in the queue gets its images, and the process exits within the grace."""
    grace_s = 240.0  # the generations take seconds; this bounds a broken drain
    stopping = start_deployment(
        tiny_dir,
        tmp_path / "drain",
        "sqlite",
        request,
        LOCALSTABILITY_SHUTDOWN_GRACE_S=str(grace_s),
        LOCALSTABILITY_BATCHING="false",
    )
    server = stopping.server
    sync_answer: dict[str, httpx.Response] = {}
    with server.client(**ASYNC) as client:
        org = client.get("/v1/user/account").json()["organizations"][0]["id"]
        first = client.post(SD1, json=LONG).json()["id"]
        running(client, first)
        second = client.post(SD1, json=t2i_body()).json()["id"]

        def sync_request() -> None:
            with server.client(**{"Generation-Id": "drain-sync-0001"}) as sync:
                sync_answer["response"] = sync.post(SD1, json=t2i_body())

        waiter = threading.Thread(target=sync_request)
        waiter.start()
        deadline = time.monotonic() + HANG_GUARD_S
        while client.get("/v1/generation/drain-sync-0001").status_code != 202:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for_log(server, "draining: admitting no new generations, letting running ones finish")

        refused = client.post(SD1, json=t2i_body())
        assert_envelope(refused, 503, "shutting_down")
        assert refused.headers["Retry-After"]
        # The generations can still be read; they are running or waiting (or have just ended).
        statuses = [
            client.get(f"/v1/generation/{generation_id}").status_code
            for generation_id in (first, second, "drain-sync-0001")
        ]
        assert set(statuses) <= {200, 202} and 202 in statuses, statuses
        with server.client() as fresh:  # a new connection is served too
            assert fresh.get("/v1/user/balance").status_code == 200

        waiter.join(timeout=grace_s)
        assert not waiter.is_alive()
    assert sync_answer["response"].status_code == 200, sync_answer["response"].text
    assert len(sync_answer["response"].json()["artifacts"]) == 1
    # uvicorn raises the signal again once it has shut down, for the exit status.
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < grace_s  # within the grace, all finished
    logs = server.logs()
    assert "Application shutdown complete." in logs and "Traceback" not in logs
    generations = stopping.admin_json("ledger", "generations", "--org", org)
    records = {r["id"]: r["status"] for r in generations}
    assert records[first] == records[second] == records["drain-sync-0001"] == "succeeded"


def test_a_second_sigterm_exits_at_once(
    tiny_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    stopping = start_deployment(
        tiny_dir,
        tmp_path / "forced",
        "sqlite",
        request,
        LOCALSTABILITY_SHUTDOWN_GRACE_S="600",
        LOCALSTABILITY_BATCHING="false",
    )
    server = stopping.server
    with server.client(**ASYNC) as client:
        first = client.post(SD1, json=LONG).json()["id"]
        running(client, first)
        for _ in range(3):
            client.post(SD1, json=LONG)
    server.process.send_signal(signal.SIGTERM)
    wait_for_log(server, "draining: admitting no new generations, letting running ones finish")
    server.process.send_signal(signal.SIGTERM)
    # Well before the four generations could finish, let alone the 600 s grace.
    assert server.process.wait(HANG_GUARD_S) == -signal.SIGTERM
    messages = [r.get("message") for r in log_records(server)]
    assert "drained" not in messages
    assert any(str(m).startswith("forced exit") for m in messages)
