"""The HTTP front door's own bounds, for the gateway and the guard: header size and count, and
read deadlines for headers and bodies.

uvicorn's httptools protocol reads a request's headers without bound and waits as long as a
client likes for the rest of a half-sent request: six connections sending 40 MiB of unterminated
headers grew the gateway from 154 to 423 MiB, and half-sent requests stayed open past 45 s.
:func:`bounded` returns a protocol class that refuses, then closes, a request whose request line
and headers pass ``max_header_bytes`` or ``max_headers`` (``431``, ``HEADERS_TOO_LARGE``), and
one whose headers, or body, do not arrive within their deadline (``408``, ``REQUEST_TIMEOUT``).
The header deadline runs from the connection's first byte (or its opening, for a silent client)
to the end of the headers; the body deadline from there to the end of the body. How many
connections a process serves at once is uvicorn's ``limit_concurrency`` (``503`` beyond it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cmcp_core.errors import REGISTRY, Code

log = logging.getLogger("cmcp.front")

LINGER_SECONDS = 2.0  # how long a refused connection's further bytes are read and dropped
_REASONS = {431: b"Request Header Fields Too Large", 408: b"Request Timeout"}


@dataclass(frozen=True)
class FrontDoorLimits:
    max_header_bytes: int = 32 * 1024  # request line and headers, as received
    max_headers: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 1000  # uvicorn's limit_concurrency

    def __post_init__(self) -> None:
        if min(self.max_header_bytes, self.max_headers, self.max_connections) < 1:
            raise ValueError("front door limits must be positive")
        if min(self.header_timeout_seconds, self.body_timeout_seconds) <= 0:
            raise ValueError("front door timeouts must be positive")


def _ignore(reason: str) -> None:
    """The default refusal hook (a component passes its metrics counter)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within :class:`FrontDoorLimits` (see the module docstring)."""

    front_limits: ClassVar[FrontDoorLimits] = FrontDoorLimits()
    on_refused: ClassVar[Callable[[str], None]] = staticmethod(_ignore)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._refused = False
        self._reading_headers = True
        self._header_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.front_limits.header_timeout_seconds, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.front_limits.max_header_bytes:
            self._refuse(431, Code.HEADERS_TOO_LARGE, "header_bytes",
                         f"request line and headers exceed {self.front_limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_headers:  # the next request on a kept-alive connection
            self._reading_headers, self._header_bytes, self._header_count = True, 0, 0
            self._arm(self.front_limits.header_timeout_seconds, "header_timeout")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > self.front_limits.max_headers:
            self._refuse(431, Code.HEADERS_TOO_LARGE, "header_count",
                         f"more than {self.front_limits.max_headers} header fields")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._reading_headers = False
        self._arm(self.front_limits.body_timeout_seconds, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:  # the app answers; just stop
            self._refused = True
            type(self).on_refused(reason)
            self.transport.close()
            return
        what = "headers" if reason == "header_timeout" else "body"
        self._refuse(408, Code.REQUEST_TIMEOUT, reason, f"the request's {what} did not arrive in time")

    def _refuse(self, status: int, code: Code, reason: str, detail: str) -> None:
        """Answer once with the coded error, close the connection, read nothing more from it."""
        self._refused = True
        self._disarm()
        type(self).on_refused(reason)
        log.warning("request refused at the front door",
                    extra={"code": str(code), "reason": reason, "client": self.client})
        body = orjson.dumps({"error_code": str(code), "message": REGISTRY[code].summary, "detail": detail})
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        # Closing with the client's bytes unread would reset the connection and could destroy
        # the answer before the client reads it: end our side, discard what still comes for a
        # moment (data_received drops it unparsed), then close.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def bounded(protocol: type[BoundedHttpToolsProtocol], limits: FrontDoorLimits,
            on_refused: Callable[[str], None] = _ignore) -> type[BoundedHttpToolsProtocol]:
    """``protocol`` under ``limits``, calling ``on_refused(reason)`` for each refusal (metrics)."""
    return type(protocol.__name__, (protocol,),
                {"front_limits": limits, "on_refused": staticmethod(on_refused)})
