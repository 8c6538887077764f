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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

from edgesplit._checks import positive_int
from edgesplit.bitstream import Frame
from edgesplit.errors import BitstreamError, ConfigError, EdgesplitError, InferenceError

from ._metrics import Metrics
from ._uvicorn import (DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_READ_TIMEOUT_S, BackgroundServer,
                       uvicorn_config)
from .device import Prediction
from .server import ForeignPayloadError, ServerDecoder

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_HEADER_BYTES", "DEFAULT_READ_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS",
           "Metrics", "Batcher", "DecodeService", "create_app", "uvicorn_config", "BackgroundServer"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024


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
        body = {"status": "ok" if ready else "unavailable", **self.info(), "num_classes": len(self.decoder.labels),
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
