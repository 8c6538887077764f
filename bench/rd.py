"""Rate-accuracy benchmark: Entropic Students (one per beta) against the teacher on JPEG, WebP, AVIF, JPEG XL and raw
inputs.

    python bench/rd.py --data DATASET_DIR [--subset val] [--students samples/weights/entropic_*.safetensors]
                       [--reuse bench/results/rd.json] --overwrite

Every point runs the real path (`edgesplit eval`): students through symbols -> FactorizedCodec -> bitstream ->
decode; the teacher on each image after encoding it with Pillow at each quality (settings: CODEC_OPTIONS in
edgesplit.train.evaluate). `--reuse FILE` takes input-codec points already measured there for the same teacher
file, subset and limit instead of encoding again. Writes bench/results/rd.json, bench/rd.png and prints the markdown
table for bench/BENCHMARKS.md. The comparison for each student is the smallest mean size among the four codecs that
reaches its top-1, interpolated in log-bytes between measured qualities.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

from edgesplit._arguments import RenamedFlag

REPO = Path(__file__).resolve().parents[1]
# 1 and 2 reach below WebP q5 (~800 B at 128 px), where the students are; AVIF and JPEG XL bottom out near 560 and
# 690 B at 128 px (quality 0), so their lists start there
QUALITIES = {"jpeg": [1, 2, 5, 10, 20, 30, 50, 70, 85, 95], "webp": [1, 2, 5, 10, 20, 30, 50, 70, 85, 95],
             "avif": [0, 5, 10, 20, 30, 40, 50, 60, 75], "jxl": [1, 5, 10, 20, 30, 50, 70, 85]}
AVIF_SPEED_CHECK = {"images": 100, "qualities": [10, 40], "speeds": [0, 2, 4]}


def iso_accuracy_bytes(points: list[dict], method: str, top1: float) -> float | None:
    """Bytes a baseline needs to reach ``top1``, interpolated in log-bytes between measured qualities."""
    pts = sorted((p["mean_bytes"], p["top1"]) for p in points if p["method"] == method)
    for (b0, a0), (b1, a1) in zip(pts, pts[1:]):
        if a0 < top1 <= a1:
            t = (top1 - a0) / (a1 - a0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    if pts and pts[0][1] >= top1:
        return pts[0][0]
    return None  # never reached


def beta_of(checkpoint: str) -> float:
    """The rate weight a published student was trained with: its first stage's ``rate`` loss weight, read from the
    recipe copied beside it (``NAME.stage1.yaml``), else from the name (``entropic_b1p6e-5`` -> 1.6e-5)."""
    import yaml

    path = Path(checkpoint)
    for recipe in (path.with_name(f"{path.stem}.stage1.yaml"),):
        if recipe.is_file():
            for loss in yaml.safe_load(recipe.read_text()).get("losses", []):
                if loss.get("name") == "rate":
                    return float(loss["weight"])
    token = path.stem.split("_b", 1)[1].split("_")[0]
    return float(token.replace("p", "."))


def _reusable(path: str | None, teacher_sha: str, subset: str, limit: int | None) -> dict[tuple[str, int], dict]:
    if not path or not Path(path).is_file():
        return {}
    old = json.loads(Path(path).read_text())
    old_subset = old.get("subset", old.get("split"))  # results written before the flag was --subset
    if old.get("teacher_sha256") != teacher_sha or old_subset != subset or old.get("limit") != limit:
        print(f"--reuse {path}: another teacher, subset or limit; measuring everything", file=sys.stderr)
        return {}
    from edgesplit.train.evaluate import CODEC_OPTIONS

    # a point measured with other encoder settings is measured again (points without "options" used today's)
    return {(p["method"], p["param"]): p for p in old["points"]
            if p["method"] in QUALITIES and p.get("options", CODEC_OPTIONS[p["method"]]) == CODEC_OPTIONS[p["method"]]}


def avif_speed_check(data: str, teacher: str) -> list[dict]:
    """AVIF's bytes and top-1 at several encoder speeds on the first images of the held-out validation subset."""
    from edgesplit.train.evaluate import CODEC_OPTIONS, evaluate_checkpoint

    rows = []
    for q in AVIF_SPEED_CHECK["qualities"]:
        for speed in AVIF_SPEED_CHECK["speeds"]:
            r = evaluate_checkpoint(teacher, data, subset="val", limit=AVIF_SPEED_CHECK["images"], input_codec="avif",
                                    quality=q, codec_options={"speed": speed})
            rows.append({"quality": q, "speed": speed, "mean_bytes": r["mean_input_bytes"], "top1": r["top1"],
                         "seconds": r["seconds"], "images": r["images"], "used": speed == CODEC_OPTIONS["avif"]["speed"]})
            print(f"avif q={q} speed={speed}: {r['mean_input_bytes']:.0f} B, top1 {r['top1']:.3f}, {r['seconds']} s",
                  file=sys.stderr)
    return rows


def run(data: str, subset: str, students: list[str], teacher: str, limit: int | None,
        reuse: str | None = None) -> dict:
    from edgesplit.bundle import sha256_file as file_sha256
    from edgesplit.train import read_metadata
    from edgesplit.train.evaluate import CODEC_OPTIONS, evaluate_checkpoint

    teacher_sha = file_sha256(teacher)
    cached = _reusable(reuse, teacher_sha, subset, limit)
    points: list[dict] = []
    raw = evaluate_checkpoint(teacher, data, subset=subset, limit=limit)
    size = raw_size = None
    size = read_metadata(teacher)["preprocess"]["size"]
    raw_size = size * size * 3
    points.append({"method": "raw", "param": None, "top1": raw["top1"], "mean_bytes": float(raw_size),
                   "images": raw["images"], "checkpoint": teacher})
    print(f"raw: top1 {raw['top1']:.4f}", file=sys.stderr)
    for method, qualities in QUALITIES.items():
        for q in qualities:
            if (method, q) in cached:
                points.append(cached[(method, q)])
                continue
            r = evaluate_checkpoint(teacher, data, subset=subset, limit=limit, input_codec=method, quality=q)
            points.append({"method": method, "param": q, "top1": r["top1"], "mean_bytes": r["mean_input_bytes"],
                           "images": r["images"], "checkpoint": teacher, "options": CODEC_OPTIONS[method]})
            print(f"{method} q={q}: top1 {r['top1']:.4f}, {r['mean_input_bytes']:.0f} B", file=sys.stderr)
    for ckpt in students:
        beta = beta_of(ckpt)
        r = evaluate_checkpoint(ckpt, data, subset=subset, limit=limit)
        points.append({"method": "entropic", "param": beta, "top1": r["top1"], "mean_bytes": r["mean_payload_bytes"],
                       "mean_information_bytes": r["mean_information_bytes"], "images": r["images"],
                       "checkpoint": ckpt, "latent_shape": r["latent_shape"]})
        print(f"entropic beta={beta}: top1 {r['top1']:.4f}, {r['mean_payload_bytes']:.1f} B", file=sys.stderr)
    for p in points:
        if p["method"] == "entropic":
            best = [(b, m) for m in QUALITIES if (b := iso_accuracy_bytes(points, m, p["top1"])) is not None]
            p["iso_accuracy_per_codec"] = {m: iso_accuracy_bytes(points, m, p["top1"]) for m in QUALITIES}
            p["iso_accuracy_baseline_bytes"] = min(best)[0] if best else None
            p["iso_accuracy_codec"] = min(best)[1] if best else None
            p["bytes_ratio_vs_baseline"] = (p["mean_bytes"] / min(best)[0]) if best else None
    return {"data": data, "subset": subset, "limit": limit, "teacher": teacher,
            "teacher_sha256": teacher_sha,  # which teacher the baselines belong to
            "codec_options": CODEC_OPTIONS,
            "image_size": size, "points": points,
            "command": f"python bench/rd.py --data {data} --subset {subset}"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"jpeg": "s--", "webp": "^--", "avif": "v--", "jxl": "D--", "entropic": "o-"}
    for method, style in styles.items():
        pts = sorted((p["mean_bytes"], p["top1"] * 100) for p in result["points"] if p["method"] == method)
        if pts:
            ax.plot(*zip(*pts), style, label={"entropic": "Entropic Student (payload; labels: beta)"}.get(method, f"teacher on {_CODEC_NAMES.get(method, method)}"))
    raw = next(p for p in result["points"] if p["method"] == "raw")
    ax.axhline(raw["top1"] * 100, color="gray", lw=1, ls=":", label=f"teacher, raw input ({raw['mean_bytes']:.0f} B)")
    ax.axhline(raw["top1"] * 100 - 1, color="tab:red", lw=0.8, ls=":", label="target: teacher - 1 point")
    for p in result["points"]:
        if p["method"] == "entropic":
            ax.annotate(f"{p['param']:.2g}".replace("e-0", "e-"), (p["mean_bytes"], p["top1"] * 100), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7, color="tab:green")
    ax.set_xscale("log")
    plotted = [p["mean_bytes"] for p in result["points"] if p["method"] != "raw"]
    ticks = [t for t in (100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
             if min(plotted) / 1.5 <= t <= max(plotted) * 1.5]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:,}" for t in ticks]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("bytes per image (log)")
    ax.set_ylabel("top-1 (%)")
    subset = result.get("subset", result.get("split"))
    ax.set_title(f"Rate vs accuracy, Imagenette {subset} subset, {result['image_size']} px")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


_CODEC_NAMES = {"jpeg": "JPEG", "webp": "WebP", "avif": "AVIF", "jxl": "JPEG XL"}


def table(result: dict) -> str:
    rows = ["| method | beta / quality | top-1 (%) | mean bytes | info bytes | smallest JPEG/WebP/AVIF/JPEG XL bytes at this top-1 | bytes / that |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    order = {"raw": 0, "jpeg": 1, "webp": 2, "avif": 3, "jxl": 4, "entropic": 5}
    for p in sorted(result["points"], key=lambda p: (order.get(p["method"], 4), p["mean_bytes"])):
        param = "-" if p["param"] is None else p["param"]
        info = f"{p['mean_information_bytes']:.0f}" if "mean_information_bytes" in p else "-"
        iso, ratio = p.get("iso_accuracy_baseline_bytes"), p.get("bytes_ratio_vs_baseline")
        iso_s = "-" if p["method"] != "entropic" else ("never reached" if iso is None else f"{iso:.0f}")
        ratio_s = f"{ratio:.2f}" if ratio else "-"
        via = f" ({_CODEC_NAMES[p['iso_accuracy_codec']]})" if p.get("iso_accuracy_codec") else ""
        rows.append(f"| {p['method']} | {param} | {p['top1'] * 100:.2f} | {p['mean_bytes']:.0f} | {info} | {iso_s}{via} | {ratio_s} |")
    return "\n".join(rows)


def _repo_relative(path: str) -> str:
    """A path inside the repository as a relative one (rd.json is committed); others unchanged."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--subset", default="val", choices=["val", "all"])
    ap.add_argument("--split", dest="subset", choices=["val", "all"], action=RenamedFlag, new="--subset",
                    help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--teacher", default=str(REPO / "samples/weights/teacher_resnet18.safetensors"))
    ap.add_argument("--students", nargs="*", default=sorted(glob.glob(str(REPO / "samples/weights/entropic_*.safetensors"))))
    ap.add_argument("--out", default=str(REPO / "bench/results/rd.json"))
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out (a committed result)")
    ap.add_argument("--reuse", help="take input-codec points from this earlier rd.json (same teacher, subset, limit)")
    ap.add_argument("--avif-speed-check", action="store_true", help="also measure AVIF at encoder speeds 0/2/4")
    args = ap.parse_args()
    if Path(args.out).exists() and not args.overwrite:
        ap.error(f"{args.out} exists (a committed result); pass --overwrite to replace it, or --out elsewhere")
    result = run(args.data, args.subset, args.students, args.teacher, args.limit, reuse=args.reuse)
    if args.avif_speed_check:
        result["avif_speed_check"] = avif_speed_check(args.data, args.teacher)
    result["command"] = "python bench/rd.py " + " ".join(sys.argv[1:])
    result["teacher"] = _repo_relative(result["teacher"])
    for p in result["points"]:
        p["checkpoint"] = _repo_relative(p["checkpoint"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    default_out = Path(args.out).resolve() == (REPO / "bench/results/rd.json").resolve()
    plot(result, REPO / "bench" / "rd.png" if default_out else Path(args.out).with_suffix(".png"))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
