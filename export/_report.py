"""The export report: its rows' text (sizes, parity, latency), the table ``edgesplit export`` prints, and the
environment it records (CPU, library versions)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Mapping

from ._parity import MATCH_ATOL

__all__ = ["REPORT_FILE", "report_table", "size_text", "parity_text", "part_figures", "cpu_name", "versions"]

REPORT_FILE = "export_report.json"


def size_text(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def parity_text(fig: Mapping[str, Any]) -> str:
    bits = []
    if "symbol_agreement" in fig:
        bits.append(f"symbols {100 * fig['symbol_agreement']:.3f}% equal")
    if "max_abs_logits" in fig:
        bits.append(f"max|dlogits| {fig['max_abs_logits']:.2e}")
    if fig.get("logits_match_fraction", 1.0) < 1.0:
        bits.append(f"logits within {MATCH_ATOL:g} on {100 * fig['logits_match_fraction']:.0f}% of images")
    if "top1_agreement" in fig:
        bits.append(f"top-1 {100 * fig['top1_agreement']:.1f}% agree")
    if fig.get("accuracy") is not None:
        bits.append(f"acc {fig['accuracy']:.3f} (drop {fig['accuracy_drop']:+.3f})")
    return ", ".join(bits) if bits else "not measured"


def part_figures(part: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that belong to one part's row (the encoder: symbols; decoder and model: logits)."""
    if not figures:
        return {}
    keys = ("symbol_agreement", "symbols_differing") if part == "encoder" else (
        "max_abs_logits", "logits_match_fraction", "top1_agreement", "accuracy", "accuracy_drop")
    return {k: figures[k] for k in keys if k in figures}


def _binary_text(info: Mapping[str, Any] | None) -> str:
    if not info:
        return ""
    if info.get("runs_as") == "BinaryConvolution":
        count = info.get("binary_convolutions")
        return f"{'?' if count is None else count}/{info['layers']} as BinaryConvolution"
    return f"{info['layers']} as {info['runs_as']}"


def report_table(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width table (what ``edgesplit export`` prints)."""
    binary = any("binary" in r for r in report["rows"])
    header: tuple[str, ...] = ("backend", "precision", "part", "file", "size", "parity", "latency b1")
    if binary:
        header += ("binary layers",)
    lines = [header]
    for r in report["rows"]:
        latency = f"{r['latency_ms_b1']:.3f} ms" if r.get("latency_ms_b1") is not None else "n/a"
        if r.get("device") == "gpu" and r.get("latency_ms_b1") is not None:
            latency += " (GPU)"
        line: tuple[str, ...] = (r["backend"], r["precision"], r["part"], r["file"], size_text(int(r["bytes"])),
                                 parity_text(r["parity"]), latency)
        lines.append(line + ((_binary_text(r.get("binary")),) if binary else ()))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    status = "passed" if report.get("passed") else "FAILED (bundle kept: --no-verify)"
    out.append(f"parity on {report['calibration']}, batch 1 and 3, through the runtime's sessions: {status}; "
               f"latency: median at batch 1 on {report.get('cpu') or 'this CPU'}"
               + (f", {report['threads']} thread(s)" if report.get("threads") else ""))
    if any(r.get("binary", {}).get("runs_as") == "INT8 Q/DQ" for r in report["rows"]):
        out.append(f"onnxruntime and tensorrt: {report['binary']['int8_note']}")
    return "\n".join(out)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(backends: list[str], precision: str) -> dict[str, str | None]:
    """Versions of the libraries that made the bundle (the manifest's ``versions``)."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    import edgesplit

    out: dict[str, str | None] = {"edgesplit": edgesplit.__version__}
    for dist in ("torch", "onnx", "onnxruntime", "openvino"):
        out[dist] = version(dist)
    if precision == "int8" and "openvino" in backends:
        out["nncf"] = version("nncf")
    if "tensorrt" in backends:
        out["tensorrt"] = version("tensorrt")
    return out
