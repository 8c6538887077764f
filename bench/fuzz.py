"""Robustness benchmark: malformed payloads, manifests, recipes and HTTP abuses, each sorted into an outcome class,
and the decode throughput with stuck clients against the clean throughput. Loopback only, bounded in time.

    python bench/fuzz.py --bundle BUNDLE [--seconds 100] [--out bench/results/fuzz.json]

Without ``--bundle``, the demo's split student (``samples/weights/entropic_b4e-5.safetensors``) is exported to a
temporary bundle first (needs ``edgesplit[train,export]``; ~15 s).

Outcome classes: ``documented`` (the documented error: BitstreamError / BundleError / ConfigError, or a 4xx),
``ok`` (a valid input answered), ``traceback`` (any other exception), ``hang`` (no result within the case's limit),
``5xx``, ``wrong_200`` (a corrupted payload answered 200 with another top-1 than the intact one) and
``undetected_same_answer`` (a corrupted payload decoded, to the intact payload's top-1). The payload cases run
again on the same tables in the older ``factorized-v2`` layout, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

from edgesplit import bitstream  # noqa: E402
from edgesplit.bundle import MANIFEST, Bundle  # noqa: E402
from edgesplit.config import load_train_config  # noqa: E402
from edgesplit.errors import BitstreamError, BundleError, ConfigError  # noqa: E402

CASE_LIMIT_S = 5.0  # an in-process case that takes longer is a hang
DOCUMENTED_STATUSES = {400, 401, 404, 405, 408, 409, 413, 415, 431, 503}


class _Hang(BaseException):
    pass


@contextlib.contextmanager
def _limit(seconds: float) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Tally:
    """Counts of outcomes per category, with up to three examples of each bad outcome."""

    BAD = ("traceback", "hang", "5xx", "wrong_200")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, outcome: str, example: str = "") -> None:
        self.counts[outcome] += 1
        if outcome in self.BAD and len(self.examples.setdefault(outcome, [])) < 3:
            self.examples[outcome].append(example[:300])

    def run(self, fn: Callable[[], str], what: str, documented: tuple[type[BaseException], ...]) -> None:
        try:
            with _limit(CASE_LIMIT_S):
                outcome = fn()
        except _Hang:
            outcome = "hang"
        except documented:
            outcome = "documented"
        except Exception as exc:  # noqa: BLE001 - what the benchmark is looking for
            self.add("traceback", f"{what}: {type(exc).__name__}: {exc} | {traceback.format_exc(limit=-2)}")
            return
        self.add(outcome, what)

    def report(self) -> dict[str, Any]:
        return {"tried": sum(self.counts.values()), "outcomes": dict(sorted(self.counts.items())),
                "bad": sum(self.counts[k] for k in self.BAD), "examples": self.examples}


# -- payloads -----------------------------------------------------------------------------------------------------

def fuzz_payloads(decoder: Any, payloads: list[bytes], rng: random.Random, deadline: float) -> dict[str, Any]:
    """Mutations of valid payloads: framing (CRC catches), re-framed coded bytes (valid CRC), header fields."""
    tally = Tally()
    intact = {p: decoder.decode(p).classes[0] for p in payloads}
    frames = [decoder.unpack(p) for p in payloads]

    def answer(data: bytes, original: bytes | None) -> Callable[[], str]:
        def run() -> str:
            top1 = decoder.decode(data).classes[0]
            if original is None or data == original:
                return "ok"
            return "undetected_same_answer" if top1 == intact[original] else "wrong_200"
        return run

    def reframe(frame: Any, coded: bytes, **kw: Any) -> bytes:
        return bitstream.pack(coded, fingerprint=kw.get("fingerprint", frame.fingerprint),
                              shape=kw.get("shape", frame.shape), codec=kw.get("codec", frame.codec))

    cases = 0
    while time.monotonic() < deadline:
        k = rng.randrange(len(payloads))
        p, frame = payloads[k], frames[k]
        kind = rng.choice(["frame_bitflip", "frame_truncate", "frame_random", "coded_bitflip", "coded_bytes",
                           "coded_truncate", "coded_extend", "header", "random"])
        if kind == "frame_bitflip":
            b = bytearray(p)
            bit = rng.randrange(len(b) * 8)
            b[bit // 8] ^= 1 << (bit % 8)
            data, original = bytes(b), p
        elif kind == "frame_truncate":
            data, original = p[:rng.randrange(len(p))], p
        elif kind == "frame_random":
            b = bytearray(p)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data, original = bytes(b), p
        elif kind == "coded_bitflip":  # a buggy encoder: the CRC is computed over corrupted bytes
            b = bytearray(frame.body)
            bit = rng.randrange(len(b) * 8)
            b[bit // 8] ^= 1 << (bit % 8)
            data, original = reframe(frame, bytes(b)), p
        elif kind == "coded_bytes":
            b = bytearray(frame.body)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            data, original = reframe(frame, bytes(b)), p
        elif kind == "coded_truncate":
            data, original = reframe(frame, frame.body[:rng.randrange(1, len(frame.body))]), p
        elif kind == "coded_extend":
            data, original = reframe(frame, frame.body + bytes(rng.randrange(1, 256) for _ in range(4))), p
        elif kind == "header":
            field = rng.choice(["shape", "fingerprint", "codec", "huge"])
            if field == "shape":
                shape = tuple(max(1, d + rng.choice([-1, 1])) for d in frame.shape)
                data = reframe(frame, frame.body, shape=shape)
            elif field == "fingerprint":
                data = reframe(frame, frame.body, fingerprint=bytes(rng.randrange(256) for _ in range(8)))
            elif field == "codec":
                data = reframe(frame, frame.body, codec=rng.choice([c for c in bitstream.CODEC_IDS.values()
                                                                       if c != frame.codec]))
            else:
                data = reframe(frame, frame.body, shape=(frame.shape[0], 1 << 20, 1 << 20))
            original = None if data == p else p
        else:
            data, original = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2048))), None
        tally.run(answer(data, original), kind, (BitstreamError,))
        cases += 1
    return tally.report()


# -- manifests ----------------------------------------------------------------------------------------------------

_VALUES: list[Any] = [None, [], {}, "", "x", 0, -1, 1 << 40, 2.5, float("nan"), True, False, ["a", 1], {"k": "v"},
                      [[[[1]]]], "../../etc/passwd", "/etc/passwd", "x" * 5000, [1] * 10_000, "\u202e\x00\x07"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            yield from _paths(v, (*prefix, i))


def _mutate(doc: Any, rng: random.Random) -> Any:
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    path = rng.choice(paths)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action < 0.3 and isinstance(parent, dict):
        parent[rng.choice(["extra", 7, None, "x" * 100])] = rng.choice(_VALUES)
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(_VALUES))
    return doc


_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


def _text_attacks(doc: Any, rng: random.Random) -> list[bytes]:
    text = yaml.safe_dump(doc, sort_keys=False)
    keys = list(doc)
    attacks = [
        b"[" * 300_000 + b"]" * 300_000,
        b"a: " + b"{b: " * 50_000 + b"1" + b"}" * 50_000,
        (_BOMB + text.replace(f"{keys[0]}:", f"{keys[0]}: *l9\nold_{keys[0]}:", 1)).encode(),
        b"\xff\xfe\x00\x01" * 1000,
        b"x: '" + b"a" * (2 << 20) + b"'",
        b"!!python/object/apply:os.system ['true']\n",
        b"a: !!binary AAAA\n",
        b"a: " + b"9" * 100_000 + b"\n",
        text.encode()[: len(text) // 2],
        b"",
        b"---\n---\n",
    ]
    for _ in range(200):
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.choice(b":-[]{}&*!|>'\"#%@`\n\t \x00\xff")
        attacks.append(bytes(b))
    return attacks


def fuzz_manifests(bundle_dir: Path, work: Path, rng: random.Random, deadline: float,
                   open_decoder: Callable[[Path], Any]) -> dict[str, Any]:
    """Structural mutations of a valid manifest and hostile manifest files; a manifest that opens is then used
    (accessors, codec tables, ServerDecoder.open)."""
    tally = Tally()
    root = work / "bundle"
    shutil.copytree(bundle_dir, root)
    good = yaml.safe_load((root / MANIFEST).read_text())
    opened_decoders = 0

    def open_and_use() -> str:
        nonlocal opened_decoders
        bundle = Bundle.open(root)
        _ = (bundle.kind, bundle.labels, bundle.preprocess, bundle.fingerprint)
        if bundle.kind == "split":
            _ = (bundle.latent_shape, bundle.codec())
            if opened_decoders < 50:  # opening a session costs ~50 ms
                opened_decoders += 1
                open_decoder(root).close()
        return "ok"

    attacks = _text_attacks(good, rng)
    for i, data in enumerate(attacks):
        (root / MANIFEST).write_bytes(data)
        tally.run(open_and_use, f"text attack {i}", (BundleError, ConfigError, BitstreamError))
    link = work / "outside.yaml"
    link.write_text(yaml.safe_dump(good))
    (root / MANIFEST).unlink()
    (root / MANIFEST).symlink_to(link)
    tally.run(open_and_use, "symlink out of the bundle", (BundleError,))
    (root / MANIFEST).unlink()
    while time.monotonic() < deadline:
        (root / MANIFEST).write_text(yaml.safe_dump(_mutate(good, rng), sort_keys=False))
        tally.run(open_and_use, "mutation", (BundleError, ConfigError, BitstreamError))
    return tally.report()


# -- recipes ------------------------------------------------------------------------------------------------------

def fuzz_recipes(work: Path, rng: random.Random, deadline: float) -> dict[str, Any]:
    tally = Tally()
    sources = sorted((REPO / "configs").glob("*.yaml"))[:8]
    docs = [yaml.safe_load(p.read_text()) for p in sources]
    docs = [d for d in docs if isinstance(d, dict) and d]
    path = work / "recipe.yaml"
    for i, data in enumerate(_text_attacks(docs[0], rng)):
        path.write_bytes(data)
        tally.run(lambda: (load_train_config(path), "ok")[1], f"text attack {i}", (ConfigError,))
    while time.monotonic() < deadline:
        path.write_text(yaml.safe_dump(_mutate(rng.choice(docs), rng), sort_keys=False))
        tally.run(lambda: (load_train_config(path), "ok")[1], "mutation", (ConfigError,))
    return {**tally.report(), "sources": [p.name for p in sources]}


# -- HTTP ---------------------------------------------------------------------------------------------------------

def _serve(bundle: Path, read_timeout: float, extra: list[str] | None = None) -> tuple[subprocess.Popen[str], int]:
    code = ("import argparse, sys\nfrom edgesplit.runtime.cli import register_cli\n"
            "p = argparse.ArgumentParser(); register_cli(p.add_subparsers())\na = p.parse_args(sys.argv[1:])\n"
            "try:\n    sys.exit(a.func(a))\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    env = {**os.environ, "EDGESPLIT_TOKEN": "fuzz-tøken", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(bundle), "--port", "0", "--threads", "1",
                             "--read-timeout", str(read_timeout), "--log-level", "critical", *(extra or [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r":(\d+)/v1/decode", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
    return proc, int(found.group(1))


def _raw(port: int, data: bytes, timeout: float, trickle: float = 0.0) -> int | str:
    """Status of the response to raw bytes; 'hang' if none within ``timeout``, 'closed' if the server closed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if trickle:
                for i in range(0, len(data), 8):
                    sock.sendall(data[i:i + 8])
                    time.sleep(trickle)
            else:
                sock.sendall(data)
            head = sock.recv(64)
    except socket.timeout:
        return "hang"
    except OSError:
        return "closed"
    if not head:
        return "closed"
    found = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(found.group(1)) if found else "garbled"


def fuzz_http(bundle: Path, payloads: list[bytes], rng: random.Random, deadline: float) -> dict[str, Any]:
    tally = Tally()
    read_timeout = 1.0
    proc, port = _serve(bundle, read_timeout)
    auth = "Bearer fuzz-tøken".encode("utf-8")
    limit = read_timeout * 2 + 5  # a response must come within this

    def request(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                declared: int | None = None) -> bytes:
        head = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
        head += [k + b": " + v for k, v in headers]
        if declared is not None or body:
            head.append(b"Content-Length: %d" % (len(body) if declared is None else declared))
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    base = [(b"Authorization", auth), (b"Content-Type", b"application/octet-stream")]
    fixed: list[tuple[str, bytes, float]] = [
        ("huge header", request(b"GET", b"/healthz", [(b"X-Big", b"a" * 50_000_000)]), 0.0),
        ("many headers", request(b"GET", b"/healthz", [(b"X-%d" % i, b"v") for i in range(5000)]), 0.0),
        ("slow headers", b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40, 0.2),
        ("stuck body", request(b"POST", b"/v1/decode", base, b"abc", declared=600), 0.0),
        ("nothing sent", b"", 0.0),
        ("bad request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 0.0),
        ("HTTP/0.9", b"GET /healthz\r\n\r\n", 0.0),
        ("bad content-length", request(b"POST", b"/v1/decode", base + [(b"Content-Length", b"-5")]), 0.0),
        ("two content-lengths", request(b"POST", b"/v1/decode", base + [(b"Content-Length", b"3"),
                                                                           (b"Content-Length", b"4")], b"abc"), 0.0),
        ("huge content-length", request(b"POST", b"/v1/decode", base, b"", declared=10 ** 30), 0.0),
        ("chunked garbage", request(b"POST", b"/v1/decode", base + [(b"Transfer-Encoding", b"chunked")],
                                    b"zz\r\nabc\r\n0\r\n\r\n"), 0.0),
        ("latin-1 token", request(b"POST", b"/v1/decode", [(b"Authorization", "Bearer fuzz-tøken".encode("latin-1"))],
                                  payloads[0]), 0.0),
        ("no token", request(b"POST", b"/v1/decode", [], payloads[0]), 0.0),
        ("json body", request(b"POST", b"/v1/decode",
                              [(b"Authorization", auth), (b"Content-Type", b"application/json")], b'{"payload": "x"}'),
         0.0),
        ("wrong method", request(b"PUT", b"/v1/decode", base, payloads[0]), 0.0),
        ("unknown path", request(b"GET", b"/../../etc/passwd", []), 0.0),
        ("oversized body", request(b"POST", b"/v1/decode", base, b"E" * 200_000), 0.0),
        ("valid", request(b"POST", b"/v1/decode", base, payloads[0]), 0.0),
    ]
    try:
        for what, data, trickle in fixed:
            status = _raw(port, data, limit, trickle)
            tally.add(_http_outcome(status, what), f"{what}: {status}")
        while time.monotonic() < deadline:
            body = rng.choice(payloads)
            kind = rng.choice(["flip", "truncate", "random", "valid", "headers"])
            if kind == "flip":
                b = bytearray(body)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                body = bytes(b)
            elif kind == "truncate":
                body = body[:rng.randrange(len(body))]
            elif kind == "random":
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1024)))
            headers = list(base)
            if kind == "headers":
                headers.append((rng.choice([b"X-A", b"Authorization", b"Content-Type", b"Accept"]),
                                bytes(rng.randrange(32, 256) for _ in range(rng.randrange(1, 200)))))
            status = _raw(port, request(b"POST", b"/v1/decode", headers, body), limit)
            tally.add(_http_outcome(status, kind), f"{kind}: {status}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    server_tracebacks = err.count("Traceback")
    if server_tracebacks:
        tally.add("traceback", f"server log: {err[-300:]}")
    return {**tally.report(), "server_log_tracebacks": server_tracebacks, "exit_code_on_sigint": proc.returncode}


def _http_outcome(status: int | str, what: str) -> str:
    if status == "hang":
        return "hang"
    if isinstance(status, int) and status >= 500 and status != 503:
        return "5xx"
    if status == 200:
        return "ok"
    return "documented"  # a 4xx or 503, or a connection the server closed after refusing the request


# -- throughput with stuck clients ----------------------------------------------------------------------------------

def throughput(bundle: Path, payloads: list[bytes], *, clients: int, seconds: float, stuck: int,
               rounds: int) -> dict[str, Any]:
    """Requests per second of ``clients`` keep-alive clients, with and without ``stuck`` clients that declare a
    600-byte body and send 3 bytes (and do it again when refused), alternating rounds."""
    import httpx

    proc, port = _serve(bundle, 10.0)
    url = f"http://127.0.0.1:{port}/v1/decode"
    headers = {"Authorization": "Bearer fuzz-tøken".encode("utf-8"), "Content-Type": b"application/octet-stream"}

    def load(n_stuck: int) -> float:
        stop = threading.Event()
        counts = [0] * clients
        stuck_socks: list[socket.socket] = []

        def stuck_client() -> None:
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", port))
                    stuck_socks.append(s)
                    s.sendall(b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                              b"Content-Length: 600\r\n\r\nabc")
                    s.settimeout(0.5)
                    while not stop.is_set():
                        try:
                            if not s.recv(4096):
                                break  # refused (408): come back stuck again
                        except socket.timeout:
                            continue
                except OSError:
                    time.sleep(0.05)

        def client(i: int) -> None:
            with httpx.Client(headers=headers, timeout=30) as c:
                k = i
                while not stop.is_set():
                    r = c.post(url, content=payloads[k % len(payloads)])
                    if r.status_code == 200:
                        counts[i] += 1
                    k += 1

        threads = [threading.Thread(target=stuck_client, daemon=True) for _ in range(n_stuck)]
        for t in threads:
            t.start()
        time.sleep(0.3 if n_stuck else 0)
        workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        t0 = time.perf_counter()
        for t in workers:
            t.start()
        time.sleep(seconds)
        stop.set()
        elapsed = time.perf_counter() - t0
        done = sum(counts)
        for t in workers:
            t.join(30)
        for s in stuck_socks:
            with contextlib.suppress(OSError):
                s.close()
        return done / elapsed

    try:
        load(0)  # warm up
        clean, with_stuck = [], []
        for _ in range(rounds):
            clean.append(load(0))
            with_stuck.append(load(stuck))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    c, s = float(np.median(clean)), float(np.median(with_stuck))
    return {"clients": clients, "stuck_clients": stuck, "seconds_per_round": seconds, "rounds": rounds,
            "clean_rps": round(c, 1), "stuck_rps": round(s, 1), "ratio": round(s / c, 3),
            "clean_rps_rounds": [round(v, 1) for v in clean], "stuck_rps_rounds": [round(v, 1) for v in with_stuck]}


# -- main -----------------------------------------------------------------------------------------------------------

STUDENT = REPO / "samples" / "weights" / "entropic_b4e-5.safetensors"  # the demo's split student


def _student_bundle(dest: Path) -> Path:
    from edgesplit.export import export_checkpoint

    return export_checkpoint(STUDENT, dest, formats="onnx", calib_images=8, threads=1).path


def _older_layout(bundle: Path, dest: Path, codec_id: str) -> Path:
    """The same bundle with its manifest naming an older payload layout of the same tables."""
    shutil.copytree(bundle, dest)
    manifest = yaml.safe_load((dest / MANIFEST).read_text())
    manifest["codec"]["id"] = codec_id
    (dest / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def _payloads(bundle: Path, count: int, data: Path | None) -> list[bytes]:
    from edgesplit.runtime import DeviceEncoder

    encoder = DeviceEncoder.open(bundle, threads=1)
    if data is not None:
        images = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        return encoder.encode_batch([str(p) for p in images])
    rng = np.random.default_rng(0)
    return encoder.encode_batch([rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) for _ in range(count)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="split bundle (default: export the demo's split student)")
    ap.add_argument("--images", type=Path, default=REPO / "samples" / "images",
                    help="images to encode into the payloads (default: the samples)")
    ap.add_argument("--seconds", type=float, default=90.0,
                    help="time budget of the cases, roughly (default 90; the export comes on top)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.json")
    args = ap.parse_args(argv)
    start = time.monotonic()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgesplit-fuzz-") as tmp:
        work = Path(tmp)
        bundle = args.bundle if args.bundle is not None else _student_bundle(work / "student.bundle")
        from edgesplit.runtime import ServerDecoder

        decoder = ServerDecoder.open(bundle, threads=1)
        if args.images is not None and not args.images.is_dir():
            args.images = None
        payloads = _payloads(bundle, 20, args.images)
        budget = args.seconds
        shares = {"payloads": 0.15, "payloads_v2": 0.1, "manifests": 0.15, "recipes": 0.1, "http": 0.2}
        results: dict[str, Any] = {"bundle": Bundle.open(bundle).manifest.get("name", bundle.name),
                                   "codec": decoder.codec_id, "latent_shape": list(decoder.latent_shape),
                                   "mean_payload_bytes": round(float(np.mean([len(p) for p in payloads])), 1)}
        t = time.monotonic()
        results["payloads"] = fuzz_payloads(decoder, payloads, rng, t + budget * shares["payloads"])
        print(f"payloads: {results['payloads']['outcomes']}", flush=True)
        older = _older_layout(bundle, work / "v2.bundle", "factorized-v2")
        t = time.monotonic()
        results["payloads_v2_layout"] = fuzz_payloads(ServerDecoder.open(older, threads=1),
                                                      _payloads(older, 20, args.images), rng,
                                                      t + budget * shares["payloads_v2"])
        print(f"payloads, v2 layout: {results['payloads_v2_layout']['outcomes']}", flush=True)
        t = time.monotonic()
        results["manifests"] = fuzz_manifests(
            bundle, work / "m", rng, t + budget * shares["manifests"],
            lambda root: ServerDecoder.open(root, threads=1))
        print(f"manifests: {results['manifests']['outcomes']}", flush=True)
        t = time.monotonic()
        (work / "r").mkdir()
        results["recipes"] = fuzz_recipes(work / "r", rng, t + budget * shares["recipes"])
        print(f"recipes: {results['recipes']['outcomes']}", flush=True)
        t = time.monotonic()
        results["http"] = fuzz_http(bundle, payloads, rng, t + budget * shares["http"])
        print(f"http: {results['http']['outcomes']}", flush=True)
        results["stuck_client"] = throughput(bundle, payloads, clients=12, seconds=max(1.0, budget * 0.04),
                                             stuck=1, rounds=3)
        print(f"throughput: {results['stuck_client']}", flush=True)
    undetected = results["payloads"]["outcomes"].get("wrong_200", 0)
    results["summary"] = {
        "tried": sum(results[k]["tried"] for k in ("payloads", "manifests", "recipes", "http")),
        "tracebacks_hangs_5xx": sum(results[k]["outcomes"].get(o, 0) for k in ("payloads", "manifests", "recipes",
                                                                                 "http")
                                    for o in ("traceback", "hang", "5xx")),
        "wrong_200": undetected,
        "stuck_within_10pct": results["stuck_client"]["ratio"] >= 0.9,
        "seconds": round(time.monotonic() - start, 1),
    }
    results["passed"] = results["summary"]["tracebacks_hangs_5xx"] == 0 and results["summary"]["stuck_within_10pct"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results["summary"]), flush=True)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
