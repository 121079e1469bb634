"""uvicorn's HTTP/1.1 protocol (h11), hardened against clients that hold connections open, and
answering in the API's error envelope what never reaches the application.

- Not HTTP: a request line, header or Content-Length that h11 can't read
  (`Content-Length: abc`) gets the 400 `bad_request` envelope (uvicorn answers in plain text),
  and the connection is closed as uvicorn does.
- Header timeout: a request's line and headers must all arrive within `header_timeout_s`,
  counted from the connection's start or, on a kept-alive connection, from the first byte of
  the next request; bytes trickling in do not restart the clock. Then a client that sent part
  of a request gets `408 request_timeout`, and the connection is closed (one that sent nothing
  is closed without an answer: it asked nothing). uvicorn itself has no such timeout: its only
  timer is the keep-alive one, between requests, and the first byte of a request stops it.
- Connection cap: beyond `max_connections` open connections a new one gets `503 server_busy`
  (with Retry-After) and is closed at once, before it is read; it never reaches the app.
  (uvicorn's `limit_concurrency` can't do this: it answers only once a whole request has
  arrived, so connections that never finish theirs are never counted out, and in plain text.)

`EnvelopeH11Protocol.with_limits(...)` makes the class `serve` runs (uvicorn builds one
protocol object per connection from a class).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from localstability.api.errors import envelope

log = logging.getLogger(__name__)

NOT_HTTP = (
    "the request is not valid HTTP/1.1: its request line, a header or its Content-Length "
    "can't be read"
)
TOO_SLOW = "the request's line and headers did not all arrive within {timeout:g} s"
BUSY = "the server has {limit} connections open, the most it holds; retry shortly"


class EnvelopeH11Protocol(H11Protocol):
    # Defaults as in config.Settings; `with_limits` sets the deployment's.
    header_timeout_s: float = 10.0
    max_connections: int = 1000

    @classmethod
    def with_limits(
        cls, *, header_timeout_s: float, max_connections: int
    ) -> type[EnvelopeH11Protocol]:
        """A subclass with these limits (uvicorn takes a protocol class, not an object)."""
        attributes: dict[str, Any] = {
            "header_timeout_s": header_timeout_s,
            "max_connections": max_connections,
        }
        return type(cls.__name__, (cls,), attributes)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the connection cap ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self.transport = transport
            log.warning(
                "connection refused: max_connections open",
                extra={"max_connections": self.max_connections},
            )
            retry_after = str(max(1, math.ceil(self.header_timeout_s)))
            self._answer(
                503,
                "server_busy",
                BUSY.format(limit=self.max_connections),
                {"Retry-After": retry_after},
            )
            return
        super().connection_made(transport)
        self._arm_header_timer()  # from the connection's start

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if self._refused:  # never counted, never read
            return
        super().connection_lost(exc)

    # -- the header timeout ----------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            # Bytes of a request's head (the first ones start the clock, the rest don't).
            self._arm_header_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head is in (or the request failed)
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request's first bytes may have come while the last one was answered.
        if (
            not self.transport.is_closing()
            and self.conn.their_state is h11.IDLE
            and self.conn.trailing_data[0]
        ):
            self._arm_header_timer()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # a connection that never asked anything
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()
            return
        log.info(
            "request head timed out: connection closed",
            extra={"header_timeout_s": self.header_timeout_s},
        )
        self._answer(408, "request_timeout", TOO_SLOW.format(timeout=self.header_timeout_s))

    # -- answers the app never sees --------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._answer(400, "bad_request", NOT_HTTP)

    def _answer(
        self, status: int, name: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Send the envelope and close the connection."""
        response = envelope(status, name, message, {"Connection": "close", **(headers or {})})
        events = (
            h11.Response(
                status_code=status, headers=response.raw_headers, reason=STATUS_PHRASES[status]
            ),
            h11.Data(data=bytes(response.body)),
            h11.EndOfMessage(),
        )
        for event in events:
            self.transport.write(self.conn.send(event) or b"")
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that doesn't read doesn't hold the socket
        else:
            self.transport.close()
