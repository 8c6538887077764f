"""1-bit students as numpy arrays (torch-free): the lowered network (BatchNorm folded) and its bundle file,
``binary/model.npz`` (1 bit per binary weight). The plugins lower a trained ``BinaryResNet`` to these arrays, the
exporter writes them, and the runtime builds its OpenVINO graph from them (``edgesplit.runtime.binary_graph``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import BundleError

__all__ = ["BUILDER", "FILE_FORMAT", "FILE_FORMAT_ACT", "FILE_FORMATS", "RealConv", "BinaryUnit", "RPReLU", "Block",
           "LoweredNet", "InputSpec", "save_net", "load_net", "weight_bytes"]

BUILDER = "binary-v1"  # the manifest's parts.<part>.openvino.builder for a file written by ``save_net``
FILE_FORMAT = 1  # the ``format`` entry of a file without activations (Bi-Real blocks)
FILE_FORMAT_ACT = 2  # ... and of one with an RPReLU after every residual addition (ReActNet blocks)
FILE_FORMATS = (FILE_FORMAT, FILE_FORMAT_ACT)  # what ``load_net`` reads
MAX_BLOCKS = 1024  # a bound on what a file may declare before anything is allocated


# -- the lowered network ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealConv:
    """A float convolution with BatchNorm folded into ``weight`` and ``bias``."""

    weight: np.ndarray  # (O, I, kh, kw) float32
    bias: np.ndarray  # (O,) float32
    stride: int
    padding: int


@dataclass(frozen=True)
class BinaryUnit:
    """``bn_scale * (alpha * conv_pad-1(binarize(x - threshold), signs)) + bn_shift``."""

    threshold: np.ndarray  # (I,) float32: binarize(x - threshold), i.e. +1 where x > threshold
    signs: np.ndarray  # (O, I, kh, kw) float32 in {-1, +1} (dense in memory; packed in files)
    alpha: np.ndarray  # (O,) float32: the binary layer's per-channel scale
    bn_scale: np.ndarray  # (O,) float32
    bn_shift: np.ndarray  # (O,) float32
    stride: int
    padding: int


@dataclass(frozen=True)
class RPReLU:
    """``prelu(x - shift_in, slope) + shift_out`` per channel (ReActNet's RPReLU)."""

    shift_in: np.ndarray  # (C,) float32
    slope: np.ndarray  # (C,) float32
    shift_out: np.ndarray  # (C,) float32


@dataclass(frozen=True)
class Block:
    """``y = act1(unit1(x) + shortcut(x))``, ``z = act2(unit2(y) + y)``; shortcut = avg pool (``pool``) then
    ``downsample``; ``act1``/``act2``: identity (None, Bi-Real) or RPReLU (ReActNet)."""

    unit1: BinaryUnit
    unit2: BinaryUnit
    pool: int  # average-pool kernel and stride; 1: none
    downsample: RealConv | None
    act1: RPReLU | None = None
    act2: RPReLU | None = None


@dataclass(frozen=True)
class LoweredNet:
    """A Bi-Real ResNet in eval mode: stem (7x7/2 conv, BN folded, ReLU, 3x3/2 max pool with padding 1), blocks,
    global average pool, fully connected head."""

    stem: RealConv
    blocks: list[Block]
    fc_weight: np.ndarray  # (classes, features)
    fc_bias: np.ndarray

    def units(self) -> list[BinaryUnit]:
        return [u for b in self.blocks for u in (b.unit1, b.unit2)]

    def activations(self) -> list[RPReLU | None]:
        """The activation after each unit's residual addition, in ``units()`` order."""
        return [a for b in self.blocks for a in (b.act1, b.act2)]


@dataclass(frozen=True)
class InputSpec:
    """The image the bundle graph takes: uint8 NHWC ``size`` x ``size`` x 3, normalized inside with mean/std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def weight_bytes(net: LoweredNet) -> dict[str, int]:
    """Bytes of the binary layers' weights: ``packed`` (1 bit each, as ``save_net`` stores them) and ``fp32``
    (a float32 each, as a dense graph such as an OpenVINO IR stores them); ``binary_layers``, ``binary_weights``."""
    counts = [int(u.signs.size) for u in net.units()]
    return {"binary_layers": len(counts), "binary_weights": sum(counts),
            "packed": sum(-(-n // 8) for n in counts), "fp32": 4 * sum(counts)}


# -- the file: a few flat numpy arrays, signs packed 8 per byte ------------------------------------------------
#
#   format, builder        int64 1, str "binary-v1"
#   input.size             int64 (); input.mean, input.std float32 (3,)
#   convs.geometry         int64 (R, 6): out, in, kh, kw, stride, padding of the float convolutions, the stem
#                          first, then the shortcuts' 1x1 convolutions
#   convs.weight           float32: their weights (BatchNorm folded), flattened and concatenated; convs.bias (sum out)
#   units.geometry         int64 (U, 6): the same for the binary convolutions, U = 2 x blocks, block by block
#   units.signs            uint8: per unit np.packbits(signs > 0) of its weights flattened in C order (big-endian
#                          bits, as ``pack_signs`` stores checkpoints), each unit starting on a byte boundary
#   units.threshold        float32 (sum in); units.affine float32 (3, sum out): alpha, bn_scale, bn_shift
#   units.act              format 2 only: float32 (3, sum out): RPReLU shift_in, slope, shift_out after each unit's
#                          residual addition (format 1: no activation, Bi-Real blocks)
#   blocks                 int64 (B, 2): average-pool size (1: none), index of the shortcut conv in convs (-1: none)
#   fc.weight, fc.bias     float32 (classes, features), (classes,)
#
# Flat arrays rather than one per layer: every array costs ~250 bytes of zip and .npy headers, which for a small
# student would be a sizeable share of its 1-bit weights.


def _conv_geometry(weight_shape: tuple[int, ...], stride: int, padding: int) -> list[int]:
    return [*(int(d) for d in weight_shape), int(stride), int(padding)]


def save_net(path: str | Path, net: LoweredNet, image: InputSpec) -> None:
    """Write ``net`` and its image input to ``path`` (an uncompressed ``.npz``: packed bits do not compress)."""
    convs = [net.stem] + [b.downsample for b in net.blocks if b.downsample is not None]
    units = net.units()
    for i, unit in enumerate(units):
        if not np.isin(unit.signs, (-1.0, 1.0)).all():
            raise ValueError(f"binary unit {i}: weights must be -1 or +1")
    acts = net.activations()
    with_act = any(a is not None for a in acts)
    if with_act and any(a is None for a in acts):
        raise ValueError("either every binary unit has an RPReLU after its residual addition or none does")
    blocks, index = [], 1
    for block in net.blocks:
        blocks.append([block.pool, index if block.downsample is not None else -1])
        index += block.downsample is not None
    out: dict[str, np.ndarray] = {
        "format": np.array(FILE_FORMAT_ACT if with_act else FILE_FORMAT, np.int64), "builder": np.array(BUILDER),
        "input.size": np.array(image.size, np.int64), "input.mean": np.asarray(image.mean, np.float32),
        "input.std": np.asarray(image.std, np.float32),
        "convs.geometry": np.array([_conv_geometry(c.weight.shape, c.stride, c.padding) for c in convs], np.int64),
        "convs.weight": np.concatenate([np.asarray(c.weight, np.float32).reshape(-1) for c in convs]),
        "convs.bias": np.concatenate([np.asarray(c.bias, np.float32) for c in convs]),
        "units.geometry": np.array([_conv_geometry(u.signs.shape, u.stride, u.padding) for u in units], np.int64),
        "units.signs": np.concatenate([np.packbits(np.asarray(u.signs).reshape(-1) > 0) for u in units]),
        "units.threshold": np.concatenate([np.asarray(u.threshold, np.float32) for u in units]),
        "units.affine": np.stack([np.concatenate([np.asarray(getattr(u, k), np.float32) for u in units])
                                  for k in ("alpha", "bn_scale", "bn_shift")]),
        "blocks": np.array(blocks, np.int64).reshape(-1, 2),
        "fc.weight": np.asarray(net.fc_weight, np.float32), "fc.bias": np.asarray(net.fc_bias, np.float32),
    }
    if with_act:
        out["units.act"] = np.stack([np.concatenate([np.asarray(getattr(a, k), np.float32) for a in acts])
                                     for k in ("shift_in", "slope", "shift_out")])
    with open(path, "wb") as f:
        np.savez(f, **out)


class _Reader:
    """Typed, shape-checked access to the arrays of one file; every problem is a ``BundleError`` naming it."""

    def __init__(self, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
        self.path, self.arrays = path, arrays

    def fail(self, message: str) -> BundleError:
        return BundleError(f"{self.path}: {message} (a damaged or foreign file: re-export the bundle)")

    def get(self, key: str, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
        """Array ``key`` of ``dtype`` and ``shape`` (None: any length); floats must be finite."""
        if key not in self.arrays:
            raise self.fail(f"array {key!r} is missing")
        a = self.arrays[key]
        if a.dtype != np.dtype(dtype) or a.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(a.shape, shape)):
            want_shape = "x".join("N" if d is None else str(d) for d in shape) or "scalar"
            raise self.fail(f"array {key!r} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {want_shape}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise self.fail(f"array {key!r} holds NaN or infinite values")
        return a

    def geometry(self, key: str, limit: int) -> list[list[int]]:
        g = self.get(key, np.int64, (None, 6))
        if not 1 <= len(g) <= limit:
            raise self.fail(f"{key} lists {len(g)} convolutions, expected 1 to {limit}")
        if (g[:, :5] < 1).any() or (g[:, 5] < 0).any():
            raise self.fail(f"{key} must hold positive sizes and strides and non-negative paddings")
        return [[int(v) for v in row] for row in g]

    def take(self, key: str, flat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
        """``flat`` cut into consecutive pieces of ``sizes`` (their sum must be its length)."""
        if flat.shape[-1] != sum(sizes):
            raise self.fail(f"{key} holds {flat.shape[-1]} values along its last axis, its geometry needs "
                            f"{sum(sizes)}")
        ends = np.cumsum([0, *sizes])
        return [flat[..., ends[i]:ends[i + 1]] for i in range(len(sizes))]


def load_net(path: str | Path) -> tuple[LoweredNet, InputSpec]:
    """Read a file written by ``save_net`` (arrays only, no pickles); a malformed one is a ``BundleError``.

    Every length is checked against the declared geometry before anything is unpacked, so a damaged or hostile
    file cannot make this allocate much more than 32 times its own size (the signs unpacked to float32).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: no such binary network file") from exc
    except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise OSError, ValueError, BadZipFile, EOFError...
        raise BundleError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    r = _Reader(path, arrays)
    version, builder = arrays.get("format"), arrays.get("builder")
    found = (int(version) if version is not None and version.shape == () and version.dtype.kind == "i" else None,
             str(builder) if builder is not None and builder.shape == () and builder.dtype.kind == "U" else None)
    if found[0] not in FILE_FORMATS or found[1] != BUILDER:
        raise BundleError(f"{path}: binary network file of format {found[0]}, builder {found[1]!r}; this edgesplit "
                          f"reads formats {', '.join(map(str, FILE_FORMATS))}, builder {BUILDER!r} (re-export the "
                          f"bundle)")
    size = int(r.get("input.size", np.int64, ()))
    mean, std = r.get("input.mean", np.float32, (3,)), r.get("input.std", np.float32, (3,))
    if size < 1 or (std <= 0).any():
        raise r.fail(f"input.size must be positive and input.std positive, got {size} and {std.tolist()}")
    image = InputSpec(size, tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]

    blocks_arr = r.get("blocks", np.int64, (None, 2))
    if not 1 <= len(blocks_arr) <= MAX_BLOCKS:
        raise r.fail(f"declares {len(blocks_arr)} blocks, expected 1 to {MAX_BLOCKS}")
    cg = r.geometry("convs.geometry", MAX_BLOCKS + 1)
    ug = r.geometry("units.geometry", 2 * MAX_BLOCKS)
    if len(ug) != 2 * len(blocks_arr):
        raise r.fail(f"units.geometry lists {len(ug)} binary convolutions for {len(blocks_arr)} blocks (2 each)")

    sizes = [o * i * h * w for o, i, h, w, _, _ in cg]
    weights = r.take("convs.weight", r.get("convs.weight", np.float32, (None,)), sizes)
    biases = r.take("convs.bias", r.get("convs.bias", np.float32, (None,)), [g[0] for g in cg])
    convs = [RealConv(w.reshape(g[:4]), b, g[4], g[5]) for w, b, g in zip(weights, biases, cg)]

    counts = [o * i * h * w for o, i, h, w, _, _ in ug]
    packed = r.take("units.signs", r.get("units.signs", np.uint8, (None,)), [-(-n // 8) for n in counts])
    thresholds = r.take("units.threshold", r.get("units.threshold", np.float32, (None,)), [g[1] for g in ug])
    affine = r.take("units.affine", r.get("units.affine", np.float32, (3, None)), [g[0] for g in ug])
    units = []
    for bits, n, t, (alpha, bn_scale, bn_shift), g in zip(packed, counts, thresholds, affine, ug):
        # unpacked here only because OpenVINO's graph takes dense +-1 constants (its plugin repacks them into bits)
        signs = (np.unpackbits(bits, count=n).astype(np.float32) * 2 - 1).reshape(g[:4])
        units.append(BinaryUnit(t, signs, alpha, bn_scale, bn_shift, g[4], g[5]))

    acts: list[RPReLU | None] = [None] * len(units)
    if found[0] == FILE_FORMAT_ACT:
        act = r.take("units.act", r.get("units.act", np.float32, (3, None)), [g[0] for g in ug])
        acts = [RPReLU(shift_in, slope, shift_out) for shift_in, slope, shift_out in act]
    elif "units.act" in arrays:
        raise r.fail(f"holds units.act but declares format {FILE_FORMAT} (no activations)")

    blocks = []
    for k, (pool, down) in enumerate(blocks_arr.tolist()):
        if pool < 1 or not (down == -1 or 1 <= down < len(convs)):
            raise r.fail(f"blocks[{k}] = ({pool}, {down}): pool must be >= 1 and the shortcut conv -1 or an index "
                         f"1..{len(convs) - 1} into convs")
        blocks.append(Block(units[2 * k], units[2 * k + 1], int(pool), convs[down] if down > 0 else None,
                            acts[2 * k], acts[2 * k + 1]))
    fc_weight = r.get("fc.weight", np.float32, (None, None))
    net = LoweredNet(convs[0], blocks, fc_weight, r.get("fc.bias", np.float32, (fc_weight.shape[0],)))
    return net, image
