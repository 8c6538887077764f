"""The ``ServerDecoder`` as a Ray Serve deployment: the HTTP API of ``edgesplit serve``, batched with ``@serve.batch``
and scaled out over replicas, locally or on a cluster, unchanged.

    from ray import serve
    from edgesplit.runtime.ray_serve import build_app, connect

    connect()                       # the cluster in RAY_ADDRESS if set, else a local Ray
    serve.run(build_app("bundles/student-split", backend="onnxruntime"), name="edgesplit", route_prefix="/")
    # POST http://127.0.0.1:8000/v1/decode, GET /healthz, GET /metrics (per replica)

or ``edgesplit serve BUNDLE --engine ray``. The bundle path must be readable by every replica (the same path on each
node, e.g. shared storage); each replica verifies the bundle when it starts. Python callers can skip HTTP:
``handle.decode_payload.remote(payload_bytes).result()`` on the handle ``serve.run`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from edgesplit.bitstream import Frame
from edgesplit.errors import BackendUnavailable, ConfigError, EdgesplitError

from .device import Prediction
from .server import ServerDecoder
from .service import DEFAULT_MAX_BODY_BYTES, DecodeService, Metrics, decode_frames

__all__ = ["APP_NAME", "build_app", "connect", "serve_bundle"]

log = logging.getLogger(__name__)

APP_NAME = "edgesplit"
_deployment_class: Any = None


def _ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise BackendUnavailable(f"the Ray Serve deployment needs ray[serve] ({exc}); install it with "
                                 "`pip install edgesplit[ray]`") from exc
    return ray, serve


def connect(**init_kwargs: Any) -> None:
    """Connect to Ray: the cluster named by RAY_ADDRESS if set (``address='auto'``), else start a local one."""
    ray, _ = _ray()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", **init_kwargs)
    else:
        ray.init(**init_kwargs)


def _deployment() -> Any:
    """The deployment class, defined on first use so that importing this module does not import Ray."""
    global _deployment_class
    if _deployment_class is not None:
        return _deployment_class
    _, serve = _ray()

    @serve.deployment(name="EdgesplitDecoder", ray_actor_options={"num_cpus": 1})
    class EdgesplitDecoder:
        """One replica: a ServerDecoder, ``@serve.batch`` over checked frames, the shared HTTP handling."""

        def __init__(self, bundle_path: str, backend: str, device: str, threads: int | None, top_k: int,
                     max_batch: int, max_wait_ms: float, max_body_bytes: int, token: str | None) -> None:
            self.decoder = ServerDecoder.open(bundle_path, backend=backend, device=device, threads=threads,
                                              top_k=top_k)
            self.metrics = Metrics()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesplit-decode")
            self._decode_batch.set_max_batch_size(max_batch)
            self._decode_batch.set_batch_wait_timeout_s(max_wait_ms / 1000.0)
            self.service = DecodeService(self.decoder, self._submit, max_body_bytes=max_body_bytes, token=token,
                                         metrics=self.metrics)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def _decode_batch(self, frames: list[Frame]) -> list[Prediction | Exception]:
            self.metrics.batch_done(len(frames))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, decode_frames, self.decoder, frames)

        async def _submit(self, frame: Frame) -> Prediction:
            result = await self._decode_batch(frame)
            if isinstance(result, Exception):
                raise result  # a bad payload fails its own request only
            return result

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            path, method = request.url.path.rstrip("/"), request.method
            if path.endswith("/v1/decode") and method == "POST":
                return await self.service.decode(request)
            if path.endswith("/healthz") and method == "GET":
                return self.service.healthz()
            if path.endswith("/metrics") and method == "GET":
                return self.service.metrics_response()
            return JSONResponse({"error": "not_found", "detail": f"{method} {request.url.path}: use POST /v1/decode, "
                                                                 "GET /healthz or GET /metrics"}, status_code=404)

        async def decode_payload(self, payload: bytes) -> dict[str, Any]:
            """For DeploymentHandle callers: payload bytes -> {classes, names, probs, top1, top1_name, fingerprint};
            BitstreamError if bad."""
            prediction = await self._submit(self.decoder.unpack(payload))
            return {**prediction.to_dict(), "fingerprint": self.decoder.fingerprint.hex()}

    _deployment_class = EdgesplitDecoder
    return EdgesplitDecoder


def build_app(bundle_path: str | Path, backend: str = "onnxruntime", *, device: str = "cpu", threads: int = 1,
              top_k: int = 5, max_batch: int = 16, max_wait_ms: float = 5.0,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, token: str | None = None, num_replicas: int = 1) -> Any:
    """A Ray Serve application decoding payloads of the split bundle at ``bundle_path``.

    Each replica reserves ``threads`` CPUs and runs the backend with that many threads (scale with
    ``num_replicas``). ``token``, if set, is required as a bearer token; note that Ray records deployment
    arguments (dashboard, state API), so prefer a network boundary on shared clusters.
    """
    deployment = _deployment()
    path = str(Path(bundle_path).resolve())
    options = {"num_replicas": num_replicas, "ray_actor_options": {"num_cpus": threads or 1},
               "max_ongoing_requests": max(4 * max_batch, 32)}
    return deployment.options(**options).bind(path, backend, device, threads, top_k, max_batch, max_wait_ms,
                                              max_body_bytes, token)


def serve_bundle(bundle_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, blocking: bool = True,
                 start_timeout: float = 120.0, ready: Callable[[str], None] | None = None,
                 **app_kwargs: Any) -> Any:
    """Start Ray Serve's HTTP proxy on ``host:port`` and run ``build_app(bundle_path, **app_kwargs)``.

    With ``blocking`` (``edgesplit serve --engine ray``) it serves until SIGINT or SIGTERM, then deletes the
    application and, if it started a local Ray, stops it and every process it started. Ray and the deployment get
    ``start_timeout`` seconds to come up (a ``BackendUnavailable`` after, with everything cleaned up);
    ``ready(url)`` is called once they are serving. Returns the deployment handle when not blocking.
    """
    ray, serve = _ray()
    if app_kwargs.get("threads") is None:
        app_kwargs["threads"] = 1
    local = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if not blocking:
        connect()
        check_cpus(ray, app_kwargs.get("num_replicas", 1), app_kwargs["threads"])
        serve.start(http_options={"host": host, "port": port})
        return serve.run(build_app(bundle_path, **app_kwargs), name=APP_NAME, route_prefix="/")

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _start() -> None:
        connect()
        check_cpus(ray, app_kwargs.get("num_replicas", 1), app_kwargs["threads"])
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(bundle_path, **app_kwargs), name=APP_NAME, route_prefix="/")

    before = _child_pids()
    previous = signal.signal(signal.SIGTERM, _stop)  # `docker stop`, systemd: the same clean exit as Ctrl-C
    try:
        _run_bounded(_start, start_timeout, "Ray Serve")
        url = f"http://{host}:{port}"
        log.info("Ray Serve: %s at %s/v1/decode", APP_NAME, url)
        if ready is not None:
            ready(url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping: deleting application %r", APP_NAME)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _shutdown(ray, serve, local, keep=before)
    return None


def check_cpus(ray: Any, num_replicas: int, threads: int) -> None:
    """A ``ConfigError`` when the replicas reserve more CPUs than the connected Ray has: Ray would otherwise queue
    the replicas that do not fit and the deployment would never become ready."""
    available = float(ray.cluster_resources().get("CPU", 0.0))
    needed = num_replicas * (threads or 1)
    if needed > available:
        raise ConfigError(f"--replicas {num_replicas} x --threads {threads or 1} reserve {needed} CPUs, but the Ray "
                          f"cluster has {available:g}; lower --replicas or --threads (each replica reserves --threads "
                          "CPUs), or connect to a larger cluster with RAY_ADDRESS")


def _run_bounded(fn: Callable[[], None], timeout: float, what: str) -> None:
    """``fn()`` on a daemon thread; a ``BackendUnavailable`` if it does not finish within ``timeout`` seconds.
    The calling thread keeps waking up, so SIGINT/SIGTERM interrupt the wait."""
    done = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="edgesplit-ray-start", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.2):
        if time.monotonic() > deadline:
            raise BackendUnavailable(f"{what} did not start within {timeout:g} s (a loaded machine, or too few free "
                                     "CPUs for the replicas?); raise --start-timeout or use --engine uvicorn")
    if failure:
        exc = failure[0]
        if isinstance(exc, EdgesplitError):
            raise exc
        raise BackendUnavailable(f"{what} failed to start: {type(exc).__name__}: {exc}") from exc


def _shutdown(ray: Any, serve: Any, local: bool, keep: set[int], timeout: float = 20.0) -> None:
    """Delete the application and, for a Ray this process started, stop it; the processes it started (children
    of this one not in ``keep``) still running after ``timeout`` seconds are terminated, then killed."""
    def stop() -> None:
        if not local:  # a cluster's Serve keeps running for others; a local one goes with its apps
            try:
                serve.delete(APP_NAME)
            except Exception as exc:  # noqa: BLE001 - not started, or Ray already gone
                log.debug("deleting %s: %s", APP_NAME, exc)
        else:
            with contextlib.suppress(Exception):
                serve.shutdown()
            with contextlib.suppress(Exception):
                ray.shutdown()

    started = _children(keep) if local else []  # before Ray stops: its agents outlive their raylet, orphaned
    stopper = threading.Thread(target=stop, name="edgesplit-ray-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if local:
        _kill(started + _children(keep), grace=5.0)


def _child_pids() -> set[int]:
    try:
        import psutil  # a dependency of ray
    except ImportError:
        return set()
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _children(keep: set[int]) -> list[Any]:
    """This process's descendants except those in ``keep``, and Ray's processes in this process group started
    after this one (Ray's agents are re-parented when their raylet goes) as ``psutil.Process`` objects."""
    try:
        import psutil
    except ImportError:
        return []
    me = psutil.Process()
    found = [p for p in me.children(recursive=True) if p.pid not in keep]
    group = os.getpgid(0)
    for p in psutil.process_iter(["pid", "create_time", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if (p.pid != me.pid and p.pid not in keep and p.info["create_time"] > me.create_time()
                    and os.getpgid(p.pid) == group and "ray" in " ".join(p.info["cmdline"] or []).lower()):
                found.append(p)
    return found


def _kill(processes: list[Any], grace: float) -> None:
    """Terminate, then after ``grace`` seconds kill, those of ``processes`` still running: a local Ray's daemons."""
    try:
        import psutil
    except ImportError:
        return
    children = list({p.pid: p for p in processes if p.is_running()}.values())
    if children:
        log.info("stopping %d processes Ray left running: %s", len(children),
                 ", ".join(sorted({_name(p) for p in children})))
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _name(process: Any) -> str:
    try:
        return str(process.name())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return str(process.pid)
