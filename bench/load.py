"""Load and fault benchmark of `edgesplit serve` on loopback: throughput, latency, batching, and failure handling.

    python bench/load.py --bundle BUNDLE --data IMAGES [--requests 300] [--out bench/results/load.json]

Real images from --data are encoded with DeviceEncoder; the payloads are sent at concurrency 1, 8 and 32 and every
answer is checked against in-process ServerDecoder decoding (wrong answers and errors must be 0). Fault cases:
garbage, truncated and oversized bodies, a payload for another model, a missing token, clients that disconnect
mid-request, and a server killed (SIGKILL) and restarted during load while clients retry with backoff. Everything
is bounded in count and time and stays on 127.0.0.1. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgesplit import bitstream
from edgesplit.data import IMAGE_EXTENSIONS
from edgesplit.runtime import DeviceEncoder, ServerDecoder

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
HOST = "127.0.0.1"
TOKEN_ENV = "EDGESPLIT_TOKEN"


# -- helpers -------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def same_answer(got: dict[str, Any], want: dict[str, Any], tol: float = 1e-5) -> bool:
    """Same bundle fingerprint, classes in the same order, probabilities equal up to float noise of batched graph
    calls."""
    return (got.get("fingerprint") == want["fingerprint"] and got.get("classes") == want["classes"]
            and got.get("top1") == want["top1"] and len(got.get("probs", [])) == len(want["probs"])
            and all(abs(a - b) <= tol for a, b in zip(got["probs"], want["probs"])))


def scrape(url: str, token: str) -> dict[str, float]:
    """The counters this benchmark reads from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Authorization": f"Bearer {token}"}).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("edgesplit_batch_size_sum", "edgesplit_batch_size_count", "edgesplit_errors_total",
                            "edgesplit_requests_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class ServerProcess:
    """`edgesplit serve` in a subprocess on a fixed port (so that it can be killed and restarted on it)."""

    def __init__(self, args: argparse.Namespace, port: int, token: str, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "edgesplit.cli", "serve", str(args.bundle), "--host", HOST, "--port",
                    str(port), "--backend", args.backend, "--max-batch", str(args.max_batch), "--max-wait-ms",
                    str(args.max_wait_ms), "--max-body-bytes", str(args.max_body_bytes), "--token-env", TOKEN_ENV,
                    "--log-level", "warning"]
        if args.threads:
            self.cmd += ["--threads", str(args.threads)]
        self.env = {**os.environ, TOKEN_ENV: token}
        self.url = f"http://{HOST}:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until /healthz answers; returns the seconds it took."""
        t0 = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout}s; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class InProcessServer:
    """The service on a thread of this process (shares the GIL with the clients: numbers are pessimistic)."""

    def __init__(self, args: argparse.Namespace, token: str) -> None:
        from edgesplit.runtime.service import BackgroundServer, create_app

        decoder = ServerDecoder.open(args.bundle, backend=args.backend, threads=args.threads)
        app = create_app(decoder, token=token, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         max_body_bytes=args.max_body_bytes)
        self.server = BackgroundServer(app, HOST, 0)
        self.url = self.server.url

    def start(self) -> float:
        t0 = time.perf_counter()
        self.server.start()
        return time.perf_counter() - t0

    def stop(self) -> None:
        self.server.stop()


# -- phases --------------------------------------------------------------------------------------------------

def run_load(url: str, token: str, payloads: list[bytes], expected: list[dict[str, Any]], concurrency: int,
             requests: int, time_limit: float) -> dict[str, Any]:
    """``requests`` POSTs (fewer if ``time_limit`` runs out) from ``concurrency`` threads; every answer checked."""
    before = scrape(url, token)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    wrong = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=url, timeout=30, limits=limits, headers=headers) as client:
        def worker() -> None:
            nonlocal wrong
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                k = i % len(payloads)
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/decode", content=payloads[k])
                    kind = None if r.status_code == 200 else f"http_{r.status_code}"
                    bad = kind is None and not same_answer(r.json(), expected[k])
                except httpx.HTTPError as exc:
                    kind, bad = type(exc).__name__, False
                elapsed = time.perf_counter() - t0
                with lock:
                    if kind is None:
                        latencies.append(elapsed)
                    else:
                        failures[kind] = failures.get(kind, 0) + 1
                    wrong += int(bad)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(worker) for _ in range(concurrency)]:
                f.result()
        seconds = time.perf_counter() - start
    after = scrape(url, token)
    batches = after.get("edgesplit_batch_size_count", 0) - before.get("edgesplit_batch_size_count", 0)
    batched = after.get("edgesplit_batch_size_sum", 0) - before.get("edgesplit_batch_size_sum", 0)
    done = len(latencies) + sum(failures.values())
    return {
        "concurrency": concurrency, "requests": done, "ok": len(latencies), "errors": sum(failures.values()),
        "error_kinds": failures, "wrong_answers": wrong, "seconds": round(seconds, 3),
        "requests_per_s": round(done / seconds, 1) if seconds else None,
        "latency_ms": {"p50": round(1000 * percentile(latencies, 50), 2),
                       "p99": round(1000 * percentile(latencies, 99), 2),
                       "mean": round(1000 * statistics.fmean(latencies), 2) if latencies else None},
        "graph_calls": int(batches), "mean_batch": round(batched / batches, 2) if batches else None,
        "stopped_by_time_limit": done < requests,
    }


def run_faults(url: str, token: str, payload: bytes, max_body_bytes: int,
               foreign: bytes) -> dict[str, dict[str, Any]]:
    """Each bad request gets its expected status, and the server keeps answering good ones correctly."""
    auth = {"Authorization": f"Bearer {token}"}
    frame = bitstream.unpack(payload)
    cases: dict[str, tuple[bytes, dict[str, str], int]] = {
        "garbage": (os.urandom(64), auth, 400),
        "truncated": (payload[: len(payload) // 2], auth, 400),
        "corrupted": (payload[:-5] + bytes([payload[-5] ^ 0xFF]) + payload[-4:], auth, 400),
        "wrong_latent_shape": (bitstream.pack(frame.body, fingerprint=frame.fingerprint,
                                              shape=(1, *frame.shape), codec=frame.codec), auth, 400),
        "oversized": (b"\0" * (max_body_bytes + 1), auth, 413),
        "wrong_model": (foreign, auth, 409),
        "missing_token": (payload, {}, 401),
        "wrong_token": (payload, {"Authorization": "Bearer not-the-token"}, 401),
    }
    results: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, (body, headers, want) in cases.items():
            r = client.post("/v1/decode", content=body, headers=headers)
            detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else ""
            results[name] = {"status": r.status_code, "expected": want, "ok": r.status_code == want,
                             "detail": str(detail)[:160]}
    results.update(disconnects(url, token, payload))
    return results


def disconnects(url: str, token: str, payload: bytes) -> dict[str, dict[str, Any]]:
    """Clients that go away: mid-body, and after sending a whole request without reading the answer."""
    host, port = url.rsplit("//", 1)[1].split(":")
    head = (f"POST /v1/decode HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    before = scrape(url, token)
    for body in (payload[: len(payload) // 3], payload):
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(head + body)
    time.sleep(0.5)
    after = scrape(url, token)
    key = 'edgesplit_errors_total{kind="client_disconnected"}'
    r = httpx.post(f"{url}/v1/decode", content=payload, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return {"client_disconnects": {"sent": 10, "server_counted_mid_body": int(after.get(key, 0) - before.get(key, 0)),
                                   "healthy_after": r.status_code == 200, "ok": r.status_code == 200}}


def run_restart(args: argparse.Namespace, token: str, payloads: list[bytes], expected: list[dict[str, Any]],
                log: Path) -> dict[str, Any]:
    """Kill -9 the server during load, restart it on the same port; clients retry with exponential backoff."""
    port = free_port()
    server = ServerProcess(args, port, token, log)
    server.start()
    total, concurrency = args.restart_requests, 8
    done = threading.Event()
    lock = threading.Lock()
    stats = {"succeeded": 0, "recovered": 0, "lost": 0, "wrong_answers": 0, "retries": 0}
    finished = [0]
    counter = iter(range(total))

    def send(client: httpx.Client, k: int) -> None:
        delay, attempt = 0.05, 0
        while True:
            try:
                r = client.post("/v1/decode", content=payloads[k])
                if r.status_code == 200:
                    with lock:
                        stats["succeeded"] += 1
                        stats["recovered"] += int(attempt > 0)
                        stats["wrong_answers"] += int(not same_answer(r.json(), expected[k]))
                    return
                retry = r.status_code in (502, 503)
            except httpx.TransportError:
                retry = True
            attempt += 1
            if not retry or attempt > args.max_retries:
                with lock:
                    stats["lost"] += 1
                return
            with lock:
                stats["retries"] += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                send(client, i % len(payloads))
                with lock:
                    finished[0] += 1
                    if finished[0] >= total // 3:
                        done.set()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        done.wait(args.time_limit)
        killed_at, killed_after = time.perf_counter(), finished[0]
        server.kill()
        restart_s = server.start()
        downtime = time.perf_counter() - killed_at
        for f in futures:
            f.result()
    seconds = time.perf_counter() - start
    server.stop()
    return {"requests": total, **stats, "killed_after": killed_after, "downtime_s": round(downtime, 2),
            "restart_s": round(restart_s, 2), "seconds": round(seconds, 2), "max_retries": args.max_retries,
            "ok": stats["lost"] == 0 and stats["wrong_answers"] == 0}


def foreign_payload(payload: bytes) -> bytes:
    """The same latent framed with another fingerprint: what a device running another bundle sends."""
    frame = bitstream.unpack(payload)
    other = bytes(b ^ 0x5A for b in frame.fingerprint)
    return bitstream.pack(frame.body, fingerprint=other, shape=frame.shape, codec=frame.codec)


def load_images(data: Path, count: int) -> list[Path]:
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"{data}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    if len(files) > count:
        files = [files[i] for i in sorted(np.random.default_rng(0).choice(len(files), count, replace=False))]
    return files


def versions() -> dict[str, str]:
    out = {}
    for dist in ("edgesplit", "numpy", "onnxruntime", "openvino", "fastapi", "uvicorn", "httpx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="split bundle directory")
    p.add_argument("--data", type=Path, required=True, help="directory of real images (searched recursively)")
    p.add_argument("--images", type=int, default=64, help="distinct images to encode (seeded sample)")
    p.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrency levels")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase at most")
    p.add_argument("--restart-requests", type=int, default=200, help="requests of the kill-and-restart phase "
                                                                      "(0 skips it)")
    p.add_argument("--max-retries", type=int, default=8, help="client retries per request in the restart phase")
    p.add_argument("--server", choices=["subprocess", "inprocess"], default="subprocess",
                   help="where the load phases' server runs (subprocess: `edgesplit serve`, numbers unaffected by "
                        "the client threads)")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--threads", type=int, help="backend threads of the server (default: the runtime's)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (a committed result)")
    args = p.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        p.error(f"{args.out} exists (a committed result); pass --overwrite to replace it, or --out elsewhere")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    token = secrets.token_urlsafe(24)

    encoder = DeviceEncoder.open(args.bundle, backend=args.backend, threads=args.threads)
    decoder = ServerDecoder.open(encoder.bundle, backend=args.backend, threads=args.threads)
    images = load_images(args.data, args.images)
    payloads = encoder.encode_batch(images)
    expected = [{**decoder.decode(pl).to_dict(), "fingerprint": decoder.fingerprint.hex()} for pl in payloads]

    log = Path(tempfile.mkdtemp(prefix="edgesplit-load-")) / "server.log"
    server: Any = (ServerProcess(args, free_port(), token, log) if args.server == "subprocess"
                   else InProcessServer(args, token))
    startup_s = server.start()
    try:
        load = []
        for c in levels:
            result = run_load(server.url, token, payloads, expected, c, args.requests, args.time_limit)
            latency = result["latency_ms"]
            print(f"concurrency {c:3d}: {result['requests_per_s']:8.1f} req/s  p50 {latency['p50']:7.2f} ms  "
                  f"p99 {latency['p99']:7.2f} ms  mean batch {result['mean_batch']}  errors {result['errors']}  "
                  f"wrong {result['wrong_answers']}", flush=True)
            load.append(result)
        faults = run_faults(server.url, token, payloads[0], args.max_body_bytes, foreign_payload(payloads[0]))
    finally:
        server.stop()
    for name, f in faults.items():
        details = json.dumps({k: v for k, v in f.items() if k != "ok"})
        print(f"fault {name:20s}: {'ok' if f['ok'] else 'FAILED'} {details}")
    restart = run_restart(args, token, payloads, expected, log) if args.restart_requests > 0 else None
    if restart is not None:
        print(f"restart: {json.dumps(restart)}")

    passed = (all(r["errors"] == 0 and r["wrong_answers"] == 0 for r in load) and all(f["ok"] for f in faults.values())
              and (restart is None or restart["ok"]))
    report = {
        "benchmark": "edgesplit serve load and faults (loopback)",
        "bundle": {"path": str(args.bundle), "name": encoder.bundle.manifest.get("name"),
                   "fingerprint": encoder.fingerprint.hex(), "latent_shape": list(encoder.latent_shape)},
        "data": {"path": str(args.data), "images": len(images),
                 "mean_payload_bytes": round(float(np.mean([len(pl) for pl in payloads])), 1)},
        "server": {"engine": "uvicorn", "where": args.server, "backend": args.backend, "threads": args.threads,
                   "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                   "max_body_bytes": args.max_body_bytes, "startup_s": round(startup_s, 2)},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "versions": versions()},
        "load": load, "faults": faults, "restart": restart, "passed": passed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'PASSED' if passed else 'FAILED'}; wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
