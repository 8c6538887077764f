"""The decode service's counters and histograms, rendered as Prometheus text by hand (no client library)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["LATENCY_BUCKETS", "BATCH_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


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
