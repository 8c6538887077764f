"""``edgesplit serve BUNDLE``: the decoder of a split bundle over HTTP (uvicorn, or Ray Serve with --engine ray).

Imports nothing heavy at import time; the command imports the runtime, FastAPI/uvicorn or Ray when it runs.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from typing import Any

from edgesplit._arguments import positive_int
from edgesplit.errors import BackendUnavailable, ConfigError

from ._backend_names import BACKENDS

__all__ = ["register_cli"]

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGESPLIT_TOKEN"


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from the environment: required if --token-env was given, optional for the default name."""
    name = args.token_env or TOKEN_ENV
    token = os.environ.get(name) or None
    if args.token_env and token is None:
        raise ConfigError(f"--token-env {name}: environment variable {name} is not set or empty "
                          "(export it, or leave out --token-env to serve without a token)")
    if token is None:
        log.warning("serving without authentication: set %s to require 'Authorization: Bearer <token>'", name)
    return token


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from exc
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0..65535; 0 picks a free one)")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from exc
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return number


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a ``ConfigError`` naming the address if it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host}: not an address this machine can bind ({exc})") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = " (another server is using it: pick another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.set_inheritable(True)
    return sock


def _cmd_serve(args: argparse.Namespace) -> int:
    token = _token(args)
    if args.engine == "ray":
        from .ray_serve import serve_bundle

        serve_bundle(args.bundle, host=args.host, port=args.port, backend=args.backend, device=args.device,
                     threads=args.threads, top_k=args.top_k, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_body_bytes=args.max_body_bytes, token=token, num_replicas=args.replicas,
                     start_timeout=args.start_timeout,
                     ready=lambda url: print(f"edgesplit serve: {args.bundle} (Ray Serve) at {url}/v1/decode",
                                             flush=True))
        return 0
    try:
        import uvicorn
    except ImportError as exc:
        raise BackendUnavailable(f"`edgesplit serve` needs fastapi and uvicorn ({exc}); "
                                 "install them with `pip install edgesplit[serve]`") from exc
    from .server import ServerDecoder
    from .service import create_app, uvicorn_config

    decoder = ServerDecoder.open(args.bundle, backend=args.backend, device=args.device, threads=args.threads,
                                 top_k=args.top_k)
    app = create_app(decoder, max_body_bytes=args.max_body_bytes, token=token, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, read_timeout=args.read_timeout)
    config = uvicorn_config(app, host=args.host, port=args.port, log_level=args.log_level,
                            graceful_timeout=args.graceful_timeout, max_header_bytes=args.max_header_bytes,
                            read_timeout=args.read_timeout, max_connections=args.max_connections)
    sock = _listen(args.host, args.port)  # bound and listening before the banner says so
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    name = decoder.bundle.manifest.get("name", args.bundle)
    print(f"edgesplit serve: {name} (fingerprint {decoder.fingerprint.hex()}, {decoder.backend} on {decoder.device}) "
          f"at http://{url_host}:{port}/v1/decode", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``serve`` to the ``edgesplit`` command line."""
    sp = subparsers.add_parser("serve", help="serve the decoder of a split bundle over HTTP (POST /v1/decode)",
                               description="Payload bytes in, top-k JSON out; GET /healthz and /metrics. "
                                           f"Set {TOKEN_ENV} (or the variable named by --token-env) to require "
                                           "a bearer token.")
    sp.add_argument("bundle", help="split bundle directory (from `edgesplit export`)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    sp.add_argument("--backend", default=BACKENDS[0], help=f"{', '.join(BACKENDS)} (default {BACKENDS[0]})")
    sp.add_argument("--device", default="cpu", help="e.g. cpu, cuda:0 (onnxruntime/tensorrt), gpu (openvino)")
    sp.add_argument("--threads", type=positive_int, help="intra-op threads of the backend (default: the runtime's)")
    sp.add_argument("--top-k", type=positive_int, default=5, help="classes per answer (default 5)")
    sp.add_argument("--max-batch", type=positive_int, default=16, help="payloads per decoder-graph call at most")
    sp.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a payload waits for others to batch with")
    sp.add_argument("--max-body-bytes", type=positive_int, default=64 * 1024,
                    help="largest payload accepted, in bytes (the POST body is one payload; default 65536); "
                         "larger gets 413")
    sp.add_argument("--max-header-bytes", type=positive_int, default=16 * 1024,
                    help="request line and headers at most (default 16384); larger gets 431")
    sp.add_argument("--read-timeout", type=_seconds, default=10.0,
                    help="seconds the headers, and then the body, of a request may take to arrive (default 10); "
                         "slower gets 408")
    sp.add_argument("--max-connections", type=positive_int, default=512,
                    help="open connections at most (default 512); requests beyond get 503")
    sp.add_argument("--start-timeout", type=_seconds, default=120.0,
                    help="--engine ray: seconds Ray and the deployment get to start (default 120)")
    sp.add_argument("--token-env", metavar="NAME",
                    help=f"environment variable holding the bearer token (default {TOKEN_ENV}; if given, it must "
                         "be set)")
    sp.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn",
                    help="uvicorn: one process; ray: a Ray Serve deployment (local, or the cluster in RAY_ADDRESS)")
    sp.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (--engine ray)")
    sp.add_argument("--graceful-timeout", type=_seconds, default=30.0,
                    help="seconds requests in flight get to finish on shutdown")
    sp.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sp.set_defaults(func=_cmd_serve)
