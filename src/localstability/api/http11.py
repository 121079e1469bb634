"""uvicorn's HTTP/1.1 protocol (h11), answering requests that are not valid HTTP in the API's
error envelope.

A request line, header or Content-Length that h11 can't read (`Content-Length: abc`) never
reaches the application: uvicorn answers it itself, in plain text. This protocol gives the same
400 as `{"id", "name": "bad_request", "message"}`, like every other error, and closes the
connection as uvicorn does.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from localstability.api.errors import envelope

NOT_HTTP = (
    "the request is not valid HTTP/1.1: its request line, a header or its Content-Length "
    "can't be read"
)


class EnvelopeH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        response = envelope(400, "bad_request", NOT_HTTP, {"Connection": "close"})
        events = (
            h11.Response(status_code=400, headers=response.raw_headers, reason=b"Bad Request"),
            h11.Data(data=bytes(response.body)),
            h11.EndOfMessage(),
        )
        for event in events:
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
