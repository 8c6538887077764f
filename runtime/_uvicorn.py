"""The server under ``edgesplit serve``: uvicorn's h11 protocol with header size and time limits and a connection
limit, so slow or stuck clients cannot hold it up; ``BackgroundServer`` runs it on a thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

from edgesplit._checks import is_int, positive_int
from edgesplit.errors import ConfigError, EdgesplitError

__all__ = ["DEFAULT_MAX_HEADER_BYTES", "DEFAULT_READ_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS", "uvicorn_config",
           "BackgroundServer"]

log = logging.getLogger("edgesplit.runtime.service")  # one logger for the service and its server

DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # request line and headers; larger gets 431
DEFAULT_READ_TIMEOUT_S = 10.0  # for the headers, and again for the body, of one request; slower gets 408
DEFAULT_MAX_CONNECTIONS = 512  # open connections; a request beyond them gets 503


def _plain_response(status: int, reason: str, text: str) -> bytes:
    body = (text + "\n").encode("ascii")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode("ascii") + body


def _guarded_protocol(max_header_bytes: int, header_timeout: float) -> type:
    """uvicorn's h11 protocol, plus: the request line and headers must fit in ``max_header_bytes`` (else 431) and
    arrive within ``header_timeout`` seconds of the connection or of the previous response (else 408)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_bytes = 0
            self._head_tail = b""
            self._head_timer: asyncio.TimerHandle | None = None
            self._awaiting_head = True
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _refuse(self, status: int, reason: str, text: str) -> None:
            self._disarm_head_timer()
            self._awaiting_head = False
            if not self.transport.is_closing():
                self.transport.write(_plain_response(status, reason, text))
                self.transport.close()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._awaiting_head and (self.cycle is None or self.cycle.response_complete):
                log.info("closing a connection whose request headers did not arrive within %gs", header_timeout)
                self._refuse(408, "Request Timeout", f"the request headers did not arrive within "
                                                     f"{header_timeout:g} s")

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head:
                window = self._head_tail + data
                end = window.find(b"\r\n\r\n")
                used = self._head_bytes + (end + 4 - len(self._head_tail) if end >= 0 else len(data))
                if used > max_header_bytes:
                    log.info("refusing a request with more than %d bytes of headers", max_header_bytes)
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"the request line and headers are over the limit of {max_header_bytes} bytes")
                    return
                if end >= 0:
                    self._awaiting_head = False
                    self._disarm_head_timer()
                else:
                    self._head_bytes = used
                    self._head_tail = window[-3:]
            super().data_received(data)

        def on_response_complete(self) -> None:
            body_unread = self.conn.their_state is not h11.DONE  # read before uvicorn starts the next cycle
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if body_unread:
                # the answer came before the whole body (413): what the client still sends is that body, not the
                # next request's headers, so this connection ends here (the client retries on a new one)
                self.transport.close()
                return
            # the next request on this connection gets its own limits
            self._awaiting_head, self._head_bytes, self._head_tail = True, 0, b""
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
                   graceful_timeout: float = 30.0, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                   read_timeout: float = DEFAULT_READ_TIMEOUT_S,
                   max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Any:
    """The ``uvicorn.Config`` that ``edgesplit serve`` runs ``app`` with: headers capped at ``max_header_bytes``
    (431) and due within ``read_timeout`` (408), at most ``max_connections`` connections at once (503 beyond)."""
    import uvicorn

    positive_int(max_connections, "max_connections")
    if not is_int(max_header_bytes) or max_header_bytes < 256 or not read_timeout > 0:
        raise ConfigError(f"max_header_bytes ({max_header_bytes!r}) must be an integer >= 256 and read_timeout "
                          f"({read_timeout!r}) > 0 seconds")
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=graceful_timeout,
                          http=_guarded_protocol(max_header_bytes, read_timeout),
                          h11_max_incomplete_event_size=max_header_bytes + 1024,
                          limit_concurrency=max_connections)


class BackgroundServer:
    """uvicorn serving ``app`` on a thread (tests, benchmarks, notebooks), configured as ``edgesplit serve`` runs it
    (``limits``: ``uvicorn_config``'s); ``stop()`` shuts down gracefully."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, graceful_timeout: float = 30.0,
                 log_level: str = "warning", **limits: Any) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn_config(app, host=self.host, port=self.port, log_level=log_level,
                                graceful_timeout=graceful_timeout, **limits)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="edgesplit-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EdgesplitError(f"uvicorn did not start on {self.url} (see its log above)")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting connections, let requests in flight finish, drain the batcher, join the thread."""
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
