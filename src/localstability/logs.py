"""Structured logging: one JSON object per line (or plain text with log_json = false).

Loggers that a client can make speak (asyncio's, uvicorn's, the HTTP layer's own) are rate
limited: a flood of one message (`socket.accept() out of system resource` when the process is
out of file descriptors, `Invalid HTTP request received.`...) is let through a few times per
interval, then summed up in one line.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pythonjsonlogger.json import JsonFormatter

# Loggers whose records a client can cause at will. Our own application loggers are not
# limited: an error's log line carries the id the client was given, and must never be dropped.
RATE_LIMITED_LOGGERS = ("asyncio", "uvicorn", "uvicorn.error", "localstability.api.http11")
SUMMARY = "suppressed %d more log records like %r in the last %.0f s"


@dataclass
class _Window:
    started: float
    level: int
    passed: int = 0
    suppressed: int = 0
    flushing: bool = False


class RateLimitFilter(logging.Filter):
    """Lets at most `burst` records with the same logger and message template through per
    `interval_s`; what it holds back is counted, and one summary line at the interval's end
    (on the same logger, at the held-back records' highest level) says how many.

    The template is the record's `msg` before formatting, up to its first line: asyncio's
    exception handler puts the repr of the socket, handle or transport on later lines. At most
    `max_keys` templates are tracked (the oldest forgotten first), so memory stays bounded
    whatever the messages are."""

    def __init__(self, burst: int = 5, interval_s: float = 10.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def template(record: logging.LogRecord) -> str:
        return str(record.msg).split("\n", 1)[0][:200]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "suppressed", None) is not None:
            return True  # our own summary
        key = (record.name, self.template(record))
        now = time.monotonic()
        summary: tuple[_Window, tuple[str, str]] | None = None
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.started >= self.interval_s:
                if window is not None and window.suppressed and not window.flushing:
                    summary = (window, key)
                window = self._windows[key] = _Window(started=now, level=record.levelno)
                self._windows.move_to_end(key)
                while len(self._windows) > self.max_keys:
                    self._windows.popitem(last=False)
            if window.passed < self.burst:
                window.passed += 1
                allowed = True
            else:
                window.suppressed += 1
                window.level = max(window.level, record.levelno)
                allowed = False
                if window.suppressed == 1:
                    window.flushing = True
                    timer = threading.Timer(
                        max(0.0, window.started + self.interval_s - now),
                        self._flush,
                        args=(key, window),
                    )
                    timer.daemon = True
                    try:
                        timer.start()
                    except RuntimeError:  # no thread to be had: the next window sums up
                        window.flushing = False
        if summary is not None:
            self._summarize(*summary)
        return allowed

    def _flush(self, key: tuple[str, str], window: _Window) -> None:
        """At the end of a window that held records back: its summary line."""
        with self._lock:
            window.flushing = False
        self._summarize(window, key)

    def _summarize(self, window: _Window, key: tuple[str, str]) -> None:
        with self._lock:
            count, window.suppressed = window.suppressed, 0
        if count:
            name, template = key
            logging.getLogger(name).log(
                window.level,
                SUMMARY,
                count,
                template,
                self.interval_s,
                extra={"suppressed": count, "suppressed_message": template},
            )

    def flush_all(self) -> None:
        """Write the summaries of every window still holding records back (at exit, tests)."""
        with self._lock:
            pending = [(w, k) for k, w in self._windows.items() if w.suppressed]
        for window, key in pending:
            self._summarize(window, key)


def install_rate_limit(
    names: tuple[str, ...] = RATE_LIMITED_LOGGERS, limiter: RateLimitFilter | None = None
) -> RateLimitFilter:
    """Put one `RateLimitFilter` on each of the loggers `names` (replacing an earlier one)."""
    limiter = limiter or RateLimitFilter()
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RateLimitFilter)]:
            logger.removeFilter(old)
        logger.addFilter(limiter)
    return limiter


def flush_rate_limits(names: tuple[str, ...] = RATE_LIMITED_LOGGERS) -> None:
    """Write now the summaries the rate limiters on `names` still hold (before exiting)."""
    limiters = {id(f): f for n in names for f in logging.getLogger(n).filters}
    for limiter in limiters.values():
        if isinstance(limiter, RateLimitFilter):
            limiter.flush_all()


def configure_logging(level: str = "INFO", json_lines: bool = True) -> RateLimitFilter:
    """Route the package's and uvicorn's logs to stderr in one format; rate limit the loggers
    a client can flood. Returns the rate limiter."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # from_pipe casts with dtype=None, and diffusers then warns on every request that
    # "modules should be kept in float32: []" (an empty list): noise, not a problem.
    logging.getLogger("diffusers.models.modeling_utils").setLevel("ERROR")
    # Our own middleware logs each request; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    return install_rate_limit()
