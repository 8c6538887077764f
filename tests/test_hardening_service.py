"""The service under slow, stuck and abusive clients: timeouts (408), header limits (431), media type (415),
connection limit (503), UTF-8 tokens, the serve command's port and banner, quiet shutdown, Ray's bounded start."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from edgesplit.errors import BackendUnavailable, BundleError, ConfigError  # noqa: E402
from edgesplit.runtime import ServerDecoder  # noqa: E402
from edgesplit.runtime.service import BackgroundServer, create_app  # noqa: E402

from .runtime_fixtures import decoder, random_payloads, split_bundle  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def payloads(split_bundle: Path) -> list[bytes]:
    return random_payloads(split_bundle, 4, seed=3)


def _raw(server: BackgroundServer, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read what comes back until the server closes it."""
    with socket.create_connection((server.host, server.port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else -1


# -- stuck and slow clients ----------------------------------------------------------------------------------

def test_a_stuck_body_gets_408_and_does_not_delay_the_batch(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    # the stuck body must outlast the measurement: once refused it could delay nobody, fixed or not
    app = create_app(decoder, max_wait_ms=600, read_timeout=4.0)
    with BackgroundServer(app) as server:
        stuck = socket.create_connection((server.host, server.port), timeout=10)
        stuck.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 600\r\n\r\nabc")
        deadline = time.monotonic() + 5
        while app.state.metrics.in_flight < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            client.post("/v1/decode", content=payloads[0])  # warm up
            t0 = time.perf_counter()
            for p in payloads:
                assert client.post("/v1/decode", content=p).status_code == 200
            per_request = (time.perf_counter() - t0) / len(payloads)
        assert per_request < 0.3, f"each request waited {per_request:.3f} s for the stuck client's batch"
        t0 = time.monotonic()
        stuck.settimeout(10)
        answer = stuck.recv(4096)
        assert _status(answer) == 408 and b"timeout" in answer and time.monotonic() - t0 < 5
        stuck.close()
        assert app.state.metrics.snapshot()["errors"].get("timeout") == 1


def test_slow_headers_and_idle_connections_get_408(decoder: ServerDecoder) -> None:
    with BackgroundServer(create_app(decoder), read_timeout=0.5) as server:
        t0 = time.monotonic()
        answer = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert _status(answer) == 408 and time.monotonic() - t0 < 3
        assert _status(_raw(server, b"")) == 408  # connected, sent nothing
        # a prompt request on a kept-alive connection still works after the first response
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(0.2)
            assert client.get("/healthz").status_code == 200


def test_headers_are_capped_with_431(decoder: ServerDecoder) -> None:
    with BackgroundServer(create_app(decoder), max_header_bytes=4096) as server:
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 50_000 + b"\r\n\r\n"
        assert _status(_raw(server, big)) == 431
        drip = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1000)) + b"\r\n"
        assert _status(_raw(server, drip)) == 431
        assert httpx.get(f"{server.url}/healthz", headers={"X-Ok": "a" * 3000}, timeout=5).status_code == 200


def test_connections_beyond_the_limit_get_503(decoder: ServerDecoder) -> None:
    with BackgroundServer(create_app(decoder), max_connections=3) as server:
        idle = [socket.create_connection((server.host, server.port)) for _ in range(2)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


# -- what a request must look like ---------------------------------------------------------------------------

def test_content_type_must_be_octet_stream(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(decoder)) as client:
        for ctype in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
            r = client.post("/v1/decode", content=payloads[0], headers={"Content-Type": ctype})
            assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
        for headers in ({}, {"Content-Type": "application/octet-stream"},
                        {"Content-Type": "Application/Octet-Stream; charset=binary"}):
            assert client.post("/v1/decode", content=payloads[0], headers=headers).status_code == 200


def test_a_non_ascii_token_is_compared_as_utf8(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    from fastapi.testclient import TestClient

    token = "pässwört-令牌"
    with TestClient(create_app(decoder, token=token)) as client:
        ok = client.post("/v1/decode", content=payloads[0],
                         headers={"Authorization": b"Bearer " + token.encode("utf-8")})
        assert ok.status_code == 200
        latin = client.post("/v1/decode", content=payloads[0],
                            headers={"Authorization": b"Bearer " + "pässwört".encode("latin-1")})
        assert latin.status_code == 401


# -- the decoder checks its labels when it opens ---------------------------------------------------------------

def test_a_label_count_that_does_not_match_the_decoder_fails_at_open(tmp_path: Path, split_bundle: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(split_bundle, bundle)
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["labels"] = manifest["labels"] + ["durian"]
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    with pytest.raises(BundleError, match="4 labels"):
        ServerDecoder.open(bundle, threads=1)


# -- the serve command -----------------------------------------------------------------------------------------

def _serve_args(*argv: str) -> argparse.Namespace:
    from edgesplit.runtime.cli import register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_refuses_a_port_that_is_not_one(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _serve_args("bundle", "--port", port)
    assert "port" in capsys.readouterr().err


def test_serve_prints_the_banner_once_listening(split_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(self: Any, sockets: Any = None) -> None:
        seen["port"] = sockets[0].getsockname()[1]
        seen["listening"] = sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    args = _serve_args(str(split_bundle), "--port", "0", "--threads", "1")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert seen["listening"] and f":{seen['port']}/v1/decode" in out and ":0/" not in out

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = _serve_args(str(split_bundle), "--port", str(taken.getsockname()[1]), "--threads", "1")
        with pytest.raises(ConfigError, match="another server"):
            args.func(args)
    assert "edgesplit serve:" not in capsys.readouterr().out  # no banner for a server that is not listening


_SERVE = """
import argparse, sys
from edgesplit.runtime.cli import register_cli
p = argparse.ArgumentParser(); register_cli(p.add_subparsers())
a = p.parse_args(sys.argv[1:])
try:
    sys.exit(a.func(a))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_an_idle_server_quietly(split_bundle: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for presses in (1, 2):
        proc = subprocess.Popen([sys.executable, "-c", _SERVE, "serve", str(split_bundle), "--port", "0",
                                 "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert "edgesplit serve:" in (proc.stdout.readline() if proc.stdout else "")
            time.sleep(0.5)
            for _ in range(presses):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in err and "CancelledError" not in err, err


# -- Ray Serve: a start that never finishes is bounded and cleaned up ------------------------------------------

def test_ray_start_is_bounded_and_cleaned_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgesplit.runtime import ray_serve

    calls: list[str] = []
    hang = threading.Event()

    class FakeRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **kwargs: Any) -> None:
            calls.append("init")

        def shutdown(self) -> None:
            calls.append("ray.shutdown")

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": 2.0}

    class FakeServe:
        def start(self, **kwargs: Any) -> None:
            calls.append("start")

        def run(self, *args: Any, **kwargs: Any) -> None:
            hang.wait(30)  # a deployment that never becomes ready

        def delete(self, name: str) -> None:
            calls.append("delete")

        def shutdown(self) -> None:
            calls.append("serve.shutdown")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_serve, "_ray", lambda: (FakeRay(), FakeServe()))
    monkeypatch.setattr(ray_serve, "build_app", lambda *a, **k: object())
    t0 = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable, match="did not start within 0.5 s"):
            ray_serve.serve_bundle(tmp_path, start_timeout=0.5)
    finally:
        hang.set()
    assert time.monotonic() - t0 < 10
    assert calls[:2] == ["init", "start"] and {"serve.shutdown", "ray.shutdown"} <= set(calls)


@pytest.mark.slow
def test_serve_engine_ray_stops_everything_it_started(split_bundle: Path) -> None:
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install edgesplit[ray])")
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, "serve", str(split_bundle), "--engine", "ray", "--port",
                             str(port), "--threads", "1", "--start-timeout", "120"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_DISABLE_USAGE_STATS": "1"})
    try:
        assert "Ray Serve" in (proc.stdout.readline() if proc.stdout else "")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        assert time.monotonic() - t0 < 60 and "Traceback" not in err
        time.sleep(1)
        assert [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if proc.poll() is None:
            proc.kill()
