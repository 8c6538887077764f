"""``edgesplit info``: what a bundle or a checkpoint is, read from its manifest, export report and metadata.

Torch-free: a checkpoint's metadata and tensor shapes are read with safetensors' numpy reader. (The cut-point table
of a teacher needs torch and lives in ``edgesplit.train.cuts``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, Bundle
from .errors import BundleError, ConfigError
from .labels import names_for

__all__ = ["describe", "describe_bundle", "describe_checkpoint", "format_info", "CHECKPOINT_META_KEY"]

CHECKPOINT_META_KEY = "edgesplit"  # the safetensors metadata key edgesplit checkpoints carry
REPORT_FILE = "export_report.json"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def describe(path: str | Path) -> dict[str, Any]:
    """``describe_bundle`` for a directory, ``describe_checkpoint`` for a file."""
    p = Path(path)
    if p.is_dir():
        return describe_bundle(p)
    if p.is_file():
        return describe_checkpoint(p)
    raise ConfigError(f"{p}: no such checkpoint file or bundle directory")


def describe_bundle(path: str | Path) -> dict[str, Any]:
    """Kind, labels and names, input, latent, parts x backends with file sizes, parity and the source model."""
    bundle = Bundle.open(path)
    m = bundle.manifest
    files = {rel: (bundle.path / rel).stat().st_size for rel in m["files"]}
    parts: dict[str, dict[str, Any]] = {}
    for part in bundle.parts():
        parts[part] = {}
        for backend, entry in (m["parts"].get(part) or {}).items():
            rels = [v for k, v in (entry or {}).items() if k != "builder" and isinstance(v, str)]
            parts[part][backend] = {"files": rels, "bytes": sum(files.get(r, 0) for r in rels),
                                    **({"builder": entry["builder"]} if entry and "builder" in entry else {})}
    out: dict[str, Any] = {
        "path": str(bundle.path), "type": "bundle", "kind": bundle.kind, "name": m.get("name"),
        "fingerprint": m["fingerprint"], "precision": m.get("precision"),
        "labels": bundle.labels, "label_names": names_for(bundle.labels, None, m.get("label_names")),
        "input": {"shape": m["input"].get("shape"), "dtype": m["input"].get("dtype"),
                  "layout": m["input"].get("layout"), "preprocess": m["input"].get("preprocess")},
        "parts": parts, "total_bytes": sum(files.values()),
        "source": m.get("source"),
    }
    if bundle.kind == "split":
        codec = m.get("codec", {})
        out["latent_shape"] = list(bundle.latent_shape)
        out["codec"] = {"id": codec.get("id"), "file": codec.get("file"), "bytes": files.get(codec.get("file"), 0)}
    params = ((m.get("source") or {}).get("model") or {}).get("params") or {}
    if params.get("teacher_sha256"):
        out["teacher"] = {"file": params.get("teacher"), "sha256": params["teacher_sha256"]}
    report_path = bundle.path / REPORT_FILE
    if REPORT_FILE in m["files"] and report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{report_path}: unreadable export report ({exc})") from exc
        out["parity"] = {"calibration": report.get("calibration"), "passed": report.get("passed"),
                         "tolerances": report.get("tolerances"),
                         "rows": [{"backend": r.get("backend"), "part": r.get("part"), **(r.get("parity") or {}),
                                   "latency_ms_b1": r.get("latency_ms_b1")} for r in report.get("rows", [])]}
    return out


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a foreign file
        raise ConfigError(f"{path}: not a safetensors checkpoint ({exc})") from exc
    if CHECKPOINT_META_KEY not in meta:
        raise ConfigError(f"{path}: safetensors file without edgesplit metadata (not written by edgesplit)")
    try:
        return json.loads(meta[CHECKPOINT_META_KEY]), shapes
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: corrupt edgesplit metadata ({exc})") from exc


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Model recipe, role (teacher, split student, full student), labels and names, input, parameters, metrics."""
    p = Path(path)
    info, shapes = _read_checkpoint(p)
    model = info.get("model") or {}
    params = model.get("params") or {}
    labels = [str(v) for v in info.get("labels", [])]
    n_params = 0
    for shape in shapes.values():
        count = 1
        for d in shape:
            count *= int(d)
        n_params += count
    split = model.get("kind") == "student" and "cut" in params
    role = "split student" if split else ("student" if model.get("kind") == "student" else "backbone")
    out: dict[str, Any] = {
        "path": str(p), "type": "checkpoint", "kind": "split" if split else "full", "role": role,
        "model": {"kind": model.get("kind"), "name": model.get("name"), "params": params},
        "labels": labels, "label_names": names_for(labels, None, info.get("label_names")),
        "input": {"preprocess": info.get("preprocess")}, "tensors": len(shapes), "values": n_params,
        "file_bytes": p.stat().st_size,
    }
    metrics = info.get("metrics") or {}
    if metrics:
        out["metrics"] = {k: v for k, v in metrics.items() if k not in ("labels",)}
    if params.get("teacher_sha256") or params.get("teacher"):
        out["teacher"] = {"file": params.get("teacher"), "sha256": params.get("teacher_sha256")}
    if split:
        out["cut"] = params.get("cut")
    return out


def format_info(d: dict[str, Any]) -> str:
    """The description as indented text lines."""
    lines: list[str] = []
    add = lines.append
    pre = (d.get("input") or {}).get("preprocess") or {}
    crop = (f"{pre.get('size')}x{pre.get('size')} center crop of the shorter side resized to {pre.get('resize')} "
            f"({pre.get('interpolation', 'bilinear')}), mean {pre.get('mean')} std {pre.get('std')}") if pre else "?"
    names = d.get("label_names") or []
    shown = [n if n == lab else f"{lab} ({n})" for lab, n in zip(d.get("labels", []), names)]
    if d["type"] == "bundle":
        add(f"bundle      {d['path']} ({d.get('name')}): {d['kind']}, {d.get('precision')}, "
            f"fingerprint {d['fingerprint']}, {_size(d['total_bytes'])}")
    else:
        m = d["model"]
        add(f"checkpoint  {d['path']}: {d['role']} {m['name']!r} ({m['kind']}), {d['values'] / 1e6:.2f} M values "
            f"in {d['tensors']} tensors, {_size(d['file_bytes'])}")
    add(f"labels      {len(d.get('labels', []))}: {', '.join(shown)}")
    add(f"input       {crop}; uint8 NHWC images in, normalization inside the graph"
        if d["type"] == "bundle" else f"input       {crop}")
    if "latent_shape" in d:
        c, h, w = d["latent_shape"]
        add(f"latent      {c}x{h}x{w} int32 symbols ({c * h * w} values), codec {d['codec']['id']} "
            f"({d['codec']['file']}, {_size(d['codec']['bytes'])})")
    if d.get("cut"):
        add(f"cut         after teacher stage {d['cut']!r}")
    if d.get("teacher"):
        add(f"teacher     {d['teacher'].get('file')} sha256 {d['teacher'].get('sha256') or '(not pinned)'}")
    for part, backends in (d.get("parts") or {}).items():
        for backend, entry in backends.items():
            how = f" (built at load time: {entry['builder']})" if entry.get("builder") else ""
            add(f"part        {part:<8} {backend:<12} {', '.join(entry['files'])}  {_size(entry['bytes'])}{how}")
    parity = d.get("parity")
    if parity:
        add(f"parity      on {parity['calibration']}: {'passed' if parity['passed'] else 'FAILED'}")
        for r in parity["rows"]:
            figs = [f"{k} {v:.4g}" for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k not in ("latency_ms_b1",)]
            lat = f", latency b1 {r['latency_ms_b1']:.2f} ms" if r.get("latency_ms_b1") is not None else ""
            add(f"            {r['backend']:<12} {r['part']:<8} {', '.join(figs) or 'not measured'}{lat}")
    metrics = d.get("metrics")
    if metrics:
        keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "data_root"}
        add("metrics     " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in keep.items()))
    for row in d.get("cuts") or []:
        if row is d["cuts"][0]:
            add("cut points  (device side = the stages up to the cut; latent = what crosses the network at the cut)")
            add(f"            {'cut':<8} {'device MMACs':>12} {'of total':>8} {'latent CxHxW':>14} {'values':>8} "
                f"{'fp32 KB':>8}")
        add(f"            {row['cut']:<8} {row['device_macs'] / 1e6:>12.1f} {100 * row['device_fraction']:>7.1f}% "
            f"{'x'.join(map(str, row['latent_shape'])):>14} {row['latent_values']:>8} "
            f"{row['latent_values'] * 4 / 1024:>8.1f}")
    return "\n".join(lines)


def is_bundle_dir(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()
