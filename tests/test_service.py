"""HTTP service: status codes through TestClient, batching and graceful shutdown on a real socket, Ray Serve."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from edgesplit import bitstream  # noqa: E402
from edgesplit.errors import BitstreamError  # noqa: E402
from edgesplit.runtime import DeviceEncoder, Prediction, ServerDecoder  # noqa: E402
from edgesplit.runtime.service import BackgroundServer, Batcher, Metrics, create_app  # noqa: E402

from .runtime_fixtures import LATENT, decoder, other_split_bundle, random_payloads, split_bundle  # noqa: E402,F401

TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module")
def payloads(split_bundle: Path) -> list[bytes]:
    return random_payloads(split_bundle, 12, seed=1)


def expected(decoder: ServerDecoder, payload: bytes) -> dict[str, object]:
    return {**decoder.decode(payload).to_dict(), "fingerprint": decoder.fingerprint.hex()}


def same(got: dict[str, object], want: dict[str, object]) -> bool:
    """Equal answers; probabilities up to the float noise of batched vs single graph calls."""
    return ({k: v for k, v in got.items() if k != "probs"} == {k: v for k, v in want.items() if k != "probs"}
            and np.allclose(got["probs"], want["probs"], rtol=0, atol=1e-6))  # type: ignore[arg-type]


def slow_decoder(bundle: Path, seconds: float) -> ServerDecoder:
    """A decoder whose graph call takes ``seconds`` longer: requests pile up (batching) or stay in flight."""
    decoder = ServerDecoder.open(bundle, threads=1)
    run = decoder.session.run

    def slow_run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(seconds)
        return run(feeds)

    decoder.session.run = slow_run  # type: ignore[method-assign]
    return decoder


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    found = re.search(pattern, text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# -- through TestClient --------------------------------------------------------------------------------------

def test_decode_statuses(decoder: ServerDecoder, payloads: list[bytes], other_split_bundle: Path) -> None:
    foreign = DeviceEncoder.open(other_split_bundle, threads=1).encode(np.zeros((40, 40, 3), np.uint8))
    app = create_app(decoder, token=TOKEN, max_body_bytes=1024)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(app) as client:
        before = client.get("/metrics").text
        r = client.post("/v1/decode", content=payloads[0], headers=auth)
        assert r.status_code == 200 and same(r.json(), expected(decoder, payloads[0]))

        r = client.post("/v1/decode", content=payloads[0])
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = client.post("/v1/decode", content=payloads[0], headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = client.post("/v1/decode", content=payloads[0], headers={"Authorization": TOKEN})
        assert r.status_code == 401

        r = client.post("/v1/decode", content=b"definitely not a payload", headers=auth)
        assert r.status_code == 400 and "magic" in r.json()["detail"]
        r = client.post("/v1/decode", content=payloads[1][:-7], headers=auth)
        assert r.status_code == 400 and "truncated" in r.json()["detail"]
        r = client.post("/v1/decode", content=b"", headers=auth)
        assert r.status_code == 400 and "empty" in r.json()["detail"]
        frame = bitstream.unpack(payloads[0])
        bad_shape = bitstream.pack(frame.body, fingerprint=frame.fingerprint, shape=(4, 4, 16), codec=frame.codec)
        r = client.post("/v1/decode", content=bad_shape, headers=auth)
        assert r.status_code == 400 and "latent shape" in r.json()["detail"]

        r = client.post("/v1/decode", content=foreign, headers=auth)
        assert r.status_code == 409 and r.json()["error"] == "foreign_payload"

        r = client.post("/v1/decode", content=b"E" * 1025, headers=auth)  # Content-Length over the limit
        assert r.status_code == 413

        def chunks():  # no Content-Length: the streamed size is what counts
            for _ in range(5):
                yield b"S" * 300

        r = client.post("/v1/decode", content=chunks(), headers=auth)
        assert r.status_code == 413 and "over the limit" in r.json()["detail"]

        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["fingerprint"] == decoder.fingerprint.hex() and health.json()["status"] == "ok"
        assert "model" not in health.json() and health.json()["num_classes"] == 3 and "labels" not in health.json()

        after = client.get("/metrics")
        assert after.headers["content-type"].startswith("text/plain")
        text = after.text
        assert metric(text, "edgesplit_requests_total", status="200") == metric(before, "edgesplit_requests_total",
                                                                              status="200") + 1
        assert metric(text, "edgesplit_requests_total", status="401") == 3
        assert metric(text, "edgesplit_requests_total", status="400") == 4
        assert metric(text, "edgesplit_requests_total", status="409") == 1
        assert metric(text, "edgesplit_requests_total", status="413") == 2
        assert metric(text, "edgesplit_errors_total", kind="unauthorized") == 3
        assert metric(text, "edgesplit_errors_total", kind="too_large") == 2
        assert metric(text, "edgesplit_batch_size_count") >= 1
        assert metric(text, "edgesplit_request_duration_seconds_count") == 11
        assert f'fingerprint="{decoder.fingerprint.hex()}"' in text
    # after the lifespan ended, the service says so instead of hanging
    assert app.state.batcher.running is False


def test_a_failing_graph_is_a_500_without_its_cause(split_bundle: Path, payloads: list[bytes]) -> None:
    """An InferenceError (the backend failed while running) answers 500 JSON naming the backend, not the runtime's
    message or a traceback, and the service keeps serving."""
    failing = ServerDecoder.open(split_bundle, threads=1)
    run = failing.session._run  # type: ignore[attr-defined]

    def broken(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("CUDA error 700 at /secret/build/path.cu")

    failing.session._run = broken  # type: ignore[attr-defined]
    with TestClient(create_app(failing)) as client:
        r = client.post("/v1/decode", content=payloads[0])
        assert r.status_code == 500 and r.json()["error"] == "inference_failed"
        assert "onnxruntime" in r.json()["detail"] and "secret" not in r.text and "Traceback" not in r.text
        failing.session._run = run  # type: ignore[attr-defined]
        r = client.post("/v1/decode", content=payloads[0])
        assert r.status_code == 200 and same(r.json(), expected(failing, payloads[0]))
        assert metric(client.get("/metrics").text, "edgesplit_errors_total", kind="inference_failed") == 1


@pytest.mark.parametrize("limits, match", [
    ({"max_batch": 0}, "max_batch must be a positive integer, got 0"),
    ({"max_queue": True}, "max_queue must be a positive integer, got True"),
    ({"max_wait_ms": -1.0}, "max_wait_ms must be >= 0"),
    ({"max_body_bytes": 0}, "max_body_bytes must be a positive integer, got 0"),
])
def test_bad_service_limits_are_config_errors(decoder: ServerDecoder, limits: dict[str, object], match: str) -> None:
    from edgesplit.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        create_app(decoder, **limits)  # type: ignore[arg-type]


def test_no_token_means_open(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    with TestClient(create_app(decoder)) as client:
        assert same(client.post("/v1/decode", content=payloads[2]).json(), expected(decoder, payloads[2]))


def test_a_lone_request_does_not_wait_for_a_batch(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    with TestClient(create_app(decoder, max_wait_ms=3000)) as client:
        t0 = time.perf_counter()
        assert client.post("/v1/decode", content=payloads[0]).status_code == 200
        assert time.perf_counter() - t0 < 1.5


def test_a_bad_payload_fails_only_itself(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    """A payload that passes the frame checks but not entropy decoding shares a batch with good ones."""
    frame = bitstream.unpack(payloads[0])
    corrupt = bitstream.pack(b"\1\2\0", fingerprint=frame.fingerprint, shape=LATENT, codec=frame.codec)
    frames = [decoder.unpack(p) for p in (payloads[3], corrupt, payloads[4])]
    batcher = Batcher(decoder, max_batch=8, max_wait_ms=200)

    async def scenario() -> list[object]:
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(f) for f in frames), return_exceptions=True)
        finally:
            await batcher.close()

    results = asyncio.run(scenario())
    assert batcher.metrics.snapshot()["batches"] == 1 and batcher.metrics.max_batch_seen == 3
    assert isinstance(results[1], BitstreamError) and "zero byte" in str(results[1])
    for result, payload in ((results[0], payloads[3]), (results[2], payloads[4])):
        assert isinstance(result, Prediction)
        assert same({**result.to_dict(), "fingerprint": decoder.fingerprint.hex()}, expected(decoder, payload))
    # and over HTTP: the same payload is a 400 with the codec's message
    with TestClient(create_app(decoder)) as client:
        r = client.post("/v1/decode", content=corrupt)
        assert r.status_code == 400 and "zero byte" in r.json()["detail"]


def test_metrics_render() -> None:
    m = Metrics()
    m.request_done(200, 0.003, None)
    m.request_done(400, 0.5, "bad_payload")
    m.batch_done(3)
    text = m.render({"fingerprint": 'a"b'}, queue_depth=2)
    assert 'edgesplit_info{fingerprint="a\\"b"} 1' in text
    assert metric(text, "edgesplit_batch_size_bucket", le="2") == 0
    assert metric(text, "edgesplit_batch_size_bucket", le="4") == 1
    assert metric(text, "edgesplit_request_duration_seconds_bucket", le="0.005") == 1
    assert metric(text, "edgesplit_request_duration_seconds_bucket", le="+Inf") == 2
    assert metric(text, "edgesplit_queue_depth") == 2
    assert text.endswith("\n")


# -- on a real socket ----------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched(split_bundle: Path, decoder: ServerDecoder, payloads: list[bytes]) -> None:
    # while one graph call runs (slowed down), the other requests queue up and go together
    app = create_app(slow_decoder(split_bundle, 0.1), token=TOKEN, max_batch=16, max_wait_ms=20)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30,
                                                       headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        barrier = threading.Barrier(8)

        def send(body: bytes) -> httpx.Response:
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            return client.post("/v1/decode", content=body)

        bodies = payloads[:8]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(send, bodies))
        assert [r.status_code for r in responses] == [200] * 8
        for r, body in zip(responses, bodies):
            assert same(r.json(), expected(decoder, body))
        text = client.get("/metrics").text
        assert metric(text, "edgesplit_requests_total", status="200") == 8
        # some graph call decoded more than one request's payload
        assert metric(text, "edgesplit_batch_size_count") < 8
        assert metric(text, "edgesplit_batch_size_bucket", le="1") < metric(text, "edgesplit_batch_size_count")


def test_client_disconnect_mid_request(decoder: ServerDecoder, payloads: list[bytes]) -> None:
    app = create_app(decoder)
    with BackgroundServer(app) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 100\r\n\r\n" + payloads[0][:10])
        deadline = time.monotonic() + 10
        while app.state.metrics.snapshot()["errors"].get("client_disconnected", 0) < 1:
            assert time.monotonic() < deadline, "the server did not notice the client going away"
            time.sleep(0.02)
        r = httpx.post(f"{server.url}/v1/decode", content=payloads[1], timeout=10)
        assert r.status_code == 200 and same(r.json(), expected(decoder, payloads[1]))


def test_graceful_shutdown_completes_requests_in_flight(split_bundle: Path, decoder: ServerDecoder,
                                                       payloads: list[bytes]) -> None:
    # A slow graph call keeps the request in flight while the server is told to stop.
    app = create_app(slow_decoder(split_bundle, 1.0))
    server = BackgroundServer(app).start()
    result: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: result.setdefault(
        "r", httpx.post(f"{server.url}/v1/decode", content=payloads[6], timeout=30)))
    sender.start()
    deadline = time.monotonic() + 10
    while app.state.batcher.queue_depth() + app.state.metrics.in_flight < 1:
        assert time.monotonic() < deadline, "the request never arrived"
        time.sleep(0.01)
    t0 = time.monotonic()
    server.stop()
    sender.join(30)
    assert result["r"].status_code == 200 and same(result["r"].json(), expected(decoder, payloads[6]))
    assert time.monotonic() - t0 < 20
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{server.url}/v1/decode", content=payloads[6], timeout=2)


# -- Ray Serve -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_serve_deployment(split_bundle: Path, decoder: ServerDecoder, payloads: list[bytes]) -> None:
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install edgesplit[ray])")
    import ray
    from ray import serve

    from edgesplit.runtime.ray_serve import APP_NAME, build_app, connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connect(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")  # loopback only
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(build_app(split_bundle, max_batch=8, max_wait_ms=50, token=TOKEN), name=APP_NAME,
                           route_prefix="/")
        assert same(handle.decode_payload.remote(payloads[0]).result(), expected(decoder, payloads[0]))
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda b: httpx.post(f"{url}/v1/decode", content=b, headers=auth, timeout=60),
                                      payloads[:6]))
        assert [r.status_code for r in responses] == [200] * 6
        for r, body in zip(responses, payloads[:6]):
            assert same(r.json(), expected(decoder, body))
        assert httpx.post(f"{url}/v1/decode", content=b"junk" * 8, headers=auth, timeout=30).status_code == 400
        assert httpx.post(f"{url}/v1/decode", content=payloads[0], timeout=30).status_code == 401
        assert httpx.get(f"{url}/healthz", timeout=30).json()["fingerprint"] == decoder.fingerprint.hex()
    finally:
        serve.shutdown()
        ray.shutdown()


# -- the load benchmark, with tiny counts --------------------------------------------------------------------

@pytest.mark.slow
def test_load_benchmark_runs(split_bundle: Path, image_folder: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "load.py"
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(script), "--bundle", str(split_bundle), "--data", str(image_folder),
                           "--images", "8", "--requests", "24", "--concurrency", "1,4", "--restart-requests", "24",
                           "--threads", "1", "--time-limit", "60", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["passed"] and [r["concurrency"] for r in report["load"]] == [1, 4]
    assert all(r["errors"] == 0 and r["wrong_answers"] == 0 and r["ok"] == 24 for r in report["load"])
    assert report["faults"]["wrong_model"]["status"] == 409 and report["faults"]["oversized"]["status"] == 413
    assert report["restart"]["lost"] == 0 and report["restart"]["succeeded"] == 24
