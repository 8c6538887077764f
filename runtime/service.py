"""HTTP service around a ``ServerDecoder`` (FastAPI): ``POST /v1/decode``, ``GET /healthz``, ``GET /metrics``.

Concurrent requests are batched into one decoder-graph call (an asyncio queue and a batcher task); every payload is
checked before it joins a batch, so one bad payload fails only its own request. ``create_app`` builds the app;
``uvicorn_config`` the server around it, whose limits keep slow or stuck clients from holding it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

from edgesplit._checks import is_int, positive_int
from edgesplit.bitstream import Frame
from edgesplit.errors import BitstreamError, ConfigError, EdgesplitError, InferenceError

from .device import Prediction
from .server import ForeignPayloadError, ServerDecoder

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_HEADER_BYTES", "DEFAULT_READ_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS",
           "Metrics", "Batcher", "DecodeService", "create_app", "uvicorn_config", "BackgroundServer"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # request line and headers; larger gets 431
DEFAULT_READ_TIMEOUT_S = 10.0  # for the headers, and again for the body, of one request; slower gets 408
DEFAULT_MAX_CONNECTIONS = 512  # open connections; a request beyond them gets 503
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


# --------------------------------------------------------------------------------------------------------
# metrics (Prometheus text exposition, written by hand: no client library needed)
# --------------------------------------------------------------------------------------------------------

class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.buckets, value, side="left"))] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                  f"{name}_count {self.count}"]
        return lines


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms of the service, thread-safe; ``render()`` gives Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch_size = _Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self.in_flight = 0
        self.decoding = 0  # requests whose payload arrived and was checked: queued, in a batch, or being answered
        self.max_batch_seen = 0

    def request_done(self, status: int, seconds: float, error: str | None) -> None:
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
            self.latency.observe(seconds)

    def batch_done(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(float(size))
            self.max_batch_seen = max(self.max_batch_seen, size)

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers, for tests and benchmarks."""
        with self._lock:
            return {"requests": dict(self.requests), "errors": dict(self.errors), "batches": self.batch_size.count,
                    "batched_payloads": int(self.batch_size.sum), "max_batch_seen": self.max_batch_seen}

    def render(self, info: dict[str, Any], queue_depth: int) -> str:
        with self._lock:
            labels = ",".join(f'{k}="{_label(v)}"' for k, v in info.items())
            lines = ["# HELP edgesplit_info The bundle and backend this server runs.", "# TYPE edgesplit_info gauge",
                     f"edgesplit_info{{{labels}}} 1",
                     "# HELP edgesplit_requests_total Decode requests by HTTP status.",
                     "# TYPE edgesplit_requests_total counter"]
            lines += [f'edgesplit_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += ["# HELP edgesplit_errors_total Failed decode requests by kind.",
                      "# TYPE edgesplit_errors_total counter"]
            lines += [f'edgesplit_errors_total{{kind="{_label(k)}"}} {n}' for k, n in sorted(self.errors.items())]
            lines += self.batch_size.render("edgesplit_batch_size", "Payloads per decoder-graph call.")
            lines += self.latency.render("edgesplit_request_duration_seconds",
                                         "Time from request to response of POST /v1/decode.")
            lines += ["# HELP edgesplit_in_flight_requests Decode requests being handled.",
                      "# TYPE edgesplit_in_flight_requests gauge", f"edgesplit_in_flight_requests {self.in_flight}",
                      "# HELP edgesplit_queue_depth Checked payloads waiting for a batch.",
                      "# TYPE edgesplit_queue_depth gauge", f"edgesplit_queue_depth {queue_depth}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------------------

class ServiceUnavailable(Exception):
    """The batcher is not running or its queue is full; the HTTP layer answers 503 (never leaves the service)."""


def decode_frames(decoder: ServerDecoder, frames: list[Frame]) -> list[Prediction | Exception]:
    """Entropy-decode each checked frame, then one graph call for those that decoded; errors stay per frame."""
    symbols: dict[int, np.ndarray] = {}
    results: list[Prediction | Exception | None] = []
    for i, frame in enumerate(frames):
        try:
            symbols[i] = decoder.symbols(frame)
            results.append(None)
        except BitstreamError as exc:
            results.append(exc)
    if symbols:
        try:
            predictions: list[Prediction | Exception] = list(decoder.predict_symbols(np.stack(list(symbols.values()))))
        except Exception as exc:  # noqa: BLE001 - the graph failed: every request of this batch gets the error
            predictions = [exc] * len(symbols)
        for i, prediction in zip(symbols, predictions):
            results[i] = prediction
    return results  # type: ignore[return-value]


@dataclass
class _Item:
    frame: Frame
    future: asyncio.Future[Prediction]


_STOP = object()


class Batcher:
    """Collects checked frames for up to ``max_wait_ms`` or ``max_batch`` frames, decodes them in one graph call
    on a worker thread, and resolves each request's future. ``close()`` finishes everything queued.

    ``pending`` (optional) counts requests in the service that may still join a batch: those whose payload has
    arrived and was checked (queued, taken, or about to be queued). When none beyond those already queued or
    taken is on its way, the batch runs at once instead of waiting out ``max_wait_ms``, so a lone request pays no
    batching delay, and a client still sending its body (or stuck) delays nobody.
    """

    def __init__(self, decoder: ServerDecoder, *, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, metrics: Metrics | None = None,
                 pending: Callable[[], int] | None = None) -> None:
        positive_int(max_batch, "max_batch")
        positive_int(max_queue, "max_queue")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 milliseconds, got {max_wait_ms!r}")
        self.decoder = decoder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.pending = pending
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-decode")
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="edgesplit-batcher")

    async def submit(self, frame: Frame) -> Prediction:
        """Queue one checked frame and wait for its prediction."""
        if not self.running or self._queue is None:
            raise ServiceUnavailable("the decoder is not running (starting or shutting down); retry shortly")
        if self._queue.qsize() >= self.max_queue:
            raise ServiceUnavailable(f"the decode queue is full ({self.max_queue} payloads); retry shortly")
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(frame, future))
        return await future

    async def close(self) -> None:
        """Stop taking payloads, decode everything already queued, then stop the worker."""
        if self._task is None or self._queue is None:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = None

    def abort(self) -> None:
        """Stop at once, decoding nothing more (the event loop is going away); queued requests get an error."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Item) and not item.future.done():
                item.future.set_exception(ServiceUnavailable("the server stopped before decoding this payload"))

    async def _run(self) -> None:
        assert self._queue is not None  # set by start(); not user input
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch: list[_Item] = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    timeout = deadline - loop.time()
                    if self.pending is not None and self.pending() <= len(batch) + self._queue.qsize():
                        timeout = 0.0  # nobody else is on the way: take what is queued and go
                    item = self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(),
                                                                                                 timeout)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            batch = [item for item in batch if not item.future.done()]  # clients that went away
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, decode_frames, self.decoder,
                                                     [item.frame for item in batch])
            except Exception as exc:  # noqa: BLE001 - keep serving; this batch's requests get the error
                log.exception("decoding a batch of %d payloads failed", len(batch))
                results = [exc] * len(batch)
            self.metrics.batch_done(len(batch))
            for item, result in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)


# --------------------------------------------------------------------------------------------------------
# HTTP handling (shared by the FastAPI app and the Ray Serve deployment)
# --------------------------------------------------------------------------------------------------------

class _Reject(Exception):
    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


class DecodeService:
    """The decode endpoint's logic over starlette requests: token, body limit, payload checks, error mapping.

    ``submit`` turns a checked frame into a prediction (the ``Batcher``'s, or Ray Serve's ``@serve.batch``).
    """

    def __init__(self, decoder: ServerDecoder, submit: Callable[[Frame], Awaitable[Prediction]], *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, token: str | None = None,
                 metrics: Metrics | None = None, queue_depth: Callable[[], int] = lambda: 0,
                 ready: Callable[[], bool] = lambda: True, read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> None:
        positive_int(max_body_bytes, "max_body_bytes")
        if not read_timeout > 0:
            raise ConfigError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        if token is not None and not token:
            raise ConfigError("token must be a non-empty string, or None for no authentication")
        self.decoder = decoder
        self.submit = submit
        self.max_body_bytes = max_body_bytes
        self._token = token.encode("utf-8") if token else None
        self.read_timeout = read_timeout
        self.metrics = metrics or Metrics()
        self.queue_depth = queue_depth
        self.ready = ready
        self.fingerprint = decoder.fingerprint.hex()

    def info(self) -> dict[str, Any]:
        """The bundle (fingerprint, name) and what runs it: backend, device, threads."""
        return {"fingerprint": self.fingerprint, "name": self.decoder.bundle.manifest.get("name", ""),
                "backend": self.decoder.backend, "device": self.decoder.device,
                "threads": self.decoder.threads if self.decoder.threads is not None else "default"}

    def _authorize(self, request: Any) -> None:
        if self._token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        # starlette decodes header bytes as Latin-1; encoding back gives the bytes sent, compared as UTF-8
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode("latin-1"), self._token):
            raise _Reject(401, "unauthorized", "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                          {"WWW-Authenticate": 'Bearer realm="edgesplit"'})

    @staticmethod
    def _check_content_type(request: Any) -> None:
        """A body labelled as anything but ``application/octet-stream`` is refused; an unlabelled one is taken as
        octet-stream (RFC 9110, 8.3)."""
        declared = request.headers.get("content-type")
        if declared is not None and declared.partition(";")[0].strip().lower() != "application/octet-stream":
            raise _Reject(415, "unsupported_media_type", "POST the payload bytes as application/octet-stream "
                                                         "(Content-Type)")

    async def _read_body(self, request: Any) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                raise _Reject(400, "bad_request", "Content-Length is not a number of bytes")
            if int(declared) > self.max_body_bytes:
                raise _Reject(413, "too_large", f"body of {declared} bytes is over the limit of "
                                                f"{self.max_body_bytes} bytes")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise _Reject(413, "too_large", f"body is over the limit of {self.max_body_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError as exc:
            raise _Reject(408, "timeout", f"the body did not arrive within {self.read_timeout:g} s "
                                          f"({size} bytes came); send it at once", {"Connection": "close"}) from exc
        if not size:
            raise _Reject(400, "bad_payload", "empty body: POST the payload bytes (application/octet-stream)")
        return b"".join(chunks)

    async def decode(self, request: Any) -> Any:
        """``POST /v1/decode``: payload bytes -> JSON {classes, names, probs, top1, top1_name, fingerprint}."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse, Response

        start = time.perf_counter()
        status, error = 200, None
        self.metrics.in_flight += 1
        decoding = reading = False
        try:
            self._authorize(request)
            self._check_content_type(request)
            reading = True
            body = await self._read_body(request)
            reading = False
            try:
                frame = self.decoder.unpack(body)
            except ForeignPayloadError as exc:
                raise _Reject(409, "foreign_payload", str(exc)) from exc
            except BitstreamError as exc:
                raise _Reject(400, "bad_payload", str(exc)) from exc
            self.metrics.decoding += 1  # from here on the batcher waits for this request
            decoding = True
            try:
                prediction = await self.submit(frame)
            except BitstreamError as exc:
                raise _Reject(400, "bad_payload", str(exc)) from exc
            except ServiceUnavailable as exc:
                raise _Reject(503, "unavailable", str(exc), {"Retry-After": "1"}) from exc
            except InferenceError as exc:
                # the cause (runtime messages, file names) stays in the server log, not in the answer
                log.error("the decoder graph failed: %s", exc)
                detail = (f"the decoder graph failed on {self.decoder.backend} ({self.decoder.device}); the server "
                          "log has the cause")
                raise _Reject(500, "inference_failed", detail) from exc
            except EdgesplitError as exc:
                log.error("decoding failed: %s", exc)
                raise _Reject(500, "decoder_failed", f"the decoder failed: {exc}") from exc
            return JSONResponse({**prediction.to_dict(), "fingerprint": self.fingerprint})
        except _Reject as exc:
            status, error = exc.status, exc.kind
            return JSONResponse({"error": exc.kind, "detail": exc.detail}, status_code=exc.status,
                                headers=exc.headers)
        except ClientDisconnect:
            status, error = 499, "client_disconnected"
            return Response(status_code=499)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if reading and task is not None:  # the server stopped while this body was still on its way
                task.uncancel()
                status, error = 503, "shutting_down"
                return JSONResponse({"error": "shutting_down", "detail": "the server is shutting down; retry"},
                                    status_code=503, headers={"Connection": "close", "Retry-After": "1"})
            status, error = 499, "client_disconnected"
            raise
        except Exception:
            status, error = 500, "internal"
            log.exception("unexpected error in /v1/decode")
            return JSONResponse({"error": "internal", "detail": "internal error (see the server log)"},
                                status_code=500)
        finally:
            self.metrics.in_flight -= 1
            if decoding:
                self.metrics.decoding -= 1
            self.metrics.request_done(status, time.perf_counter() - start, error)

    def healthz(self) -> Any:
        """``GET /healthz``: 200 with the bundle's fingerprint and backend while serving, 503 while starting or
        draining."""
        from starlette.responses import JSONResponse

        ready = self.ready()
        body = {"status": "ok" if ready else "unavailable", **self.info(), "labels": len(self.decoder.labels),
                "latent_shape": list(self.decoder.latent_shape)}
        return JSONResponse(body, status_code=200 if ready else 503)

    def metrics_response(self) -> Any:
        """``GET /metrics``: Prometheus text exposition."""
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(self.metrics.render(self.info(), self.queue_depth()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(decoder: ServerDecoder, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, token: str | None = None,
               max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 1024,
               read_timeout: float = DEFAULT_READ_TIMEOUT_S) -> Any:
    """A FastAPI app serving ``decoder``: ``POST /v1/decode``, ``GET /healthz``, ``GET /metrics``.

    ``token``: if set, decode requests need ``Authorization: Bearer <token>``. ``read_timeout``: seconds a body
    may take to arrive (408 after); header limits are the server's (run the app with ``uvicorn_config``).
    Batching starts and drains with the app's lifespan (uvicorn runs it; in tests use ``with TestClient(app)``).
    ``app.state.metrics`` holds the counters.
    """
    from fastapi import FastAPI

    metrics = Metrics()
    batcher = Batcher(decoder, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, metrics=metrics,
                      pending=lambda: metrics.decoding)
    service = DecodeService(decoder, batcher.submit, max_body_bytes=max_body_bytes, token=token, metrics=metrics,
                            queue_depth=batcher.queue_depth, ready=lambda: batcher.running,
                            read_timeout=read_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        log.info("serving %s", service.info())
        try:
            yield
            await batcher.close()  # requests still queued get their answers before the worker stops
        except asyncio.CancelledError:  # the loop is torn down (a second Ctrl-C): stop quietly, drain nothing
            batcher.abort()
        except BaseException:
            batcher.abort()
            raise

    async def healthz(request: Any) -> Any:
        return service.healthz()

    async def metrics_endpoint(request: Any) -> Any:
        return service.metrics_response()

    app = FastAPI(title="edgesplit decoder", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    # Plain starlette routes: the handlers take the raw request (streamed body, headers), no FastAPI injection.
    app.add_route("/v1/decode", service.decode, methods=["POST"])
    app.add_route("/healthz", healthz, methods=["GET"])
    app.add_route("/metrics", metrics_endpoint, methods=["GET"])
    app.state.metrics, app.state.batcher, app.state.service = metrics, batcher, service
    return app


# --------------------------------------------------------------------------------------------------------
# the server: uvicorn's h11 protocol with header limits, a connection limit
# --------------------------------------------------------------------------------------------------------

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
