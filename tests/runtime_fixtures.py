"""Tiny split and full bundles for the runtime tests, written like the exporter writes them (``BundleWriter``).

Small torch modules exported with ``torch.onnx.export(dynamo=True)``, OpenVINO IR from the ONNX files, codec tables
from ``discretized_laplace_pmfs``. Swap ``build_split_bundle``/``build_full_bundle`` for the real exporter later.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesplit.bundle import Bundle, BundleWriter
from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs
from edgesplit.preprocess import Preprocess

LABELS = ["apple", "banana", "cherry"]
SIZE = 32  # crop side
LATENT = (4, 8, 8)  # C, H, W of the split point
PREPROCESS = Preprocess(size=SIZE, resize=36)
HALF_WIDTH = 8

_lock = threading.Lock()
_built: dict[str, Path] = {}


def _modules(seed: int) -> tuple[Any, Any, Any]:
    """(encoder, decoder, full) tiny torch modules with normalization inside, like the exported students."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mean = torch.tensor(PREPROCESS.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS.std).view(1, 3, 1, 1)

    class Normalize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean * 255.0)
            self.register_buffer("std", std * 255.0)

        def forward(self, image: torch.Tensor) -> torch.Tensor:  # uint8 NHWC -> float NCHW
            return (image.permute(0, 3, 1, 2).float() - self.mean) / self.std

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Normalize()
            self.conv = nn.Conv2d(3, LATENT[0], 4, stride=4)
            self.register_buffer("median", torch.randn(1, LATENT[0], 1, 1) * 0.3)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            y = self.conv(self.norm(image)) * 3.0
            return torch.round(y - self.median).to(torch.int32)

    class Decoder(nn.Module):
        def __init__(self, median: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("median", median.clone())
            self.conv = nn.Conv2d(LATENT[0], 8, 3, padding=1)
            self.head = nn.Linear(8, len(LABELS))

        def forward(self, symbols: torch.Tensor) -> torch.Tensor:
            y = symbols.float() + self.median
            return self.head(torch.relu(self.conv(y)).mean(dim=(2, 3)))

    class Full(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Normalize()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.head = nn.Linear(8, len(LABELS))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(self.norm(image))).mean(dim=(2, 3)))

    encoder = Encoder().eval()
    return encoder, Decoder(encoder.median).eval(), Full().eval()


def _export(module: Any, example: Any, input_name: str, output_name: str, onnx_path: Path, ov_dir: Path,
            stem: str) -> dict[str, str]:
    import onnx
    import openvino as ov
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=({0: batch},), verbose=False)
    onnx.save(program.model_proto, str(onnx_path), save_as_external_data=False)
    ov_model = ov.convert_model(str(onnx_path))
    ov.save_model(ov_model, str(ov_dir / f"{stem}.xml"), compress_to_fp16=False)
    return {"model": f"openvino/{stem}.xml", "weights": f"openvino/{stem}.bin"}


def _io(onnx_path: Path) -> dict[str, Any]:
    import onnx

    names = {1: "float32", 2: "uint8", 6: "int32", 7: "int64"}
    model = onnx.load(str(onnx_path))

    def spec(values: Any) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = {"shape": shape, "dtype": names.get(t.elem_type, str(t.elem_type))}
        return out

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output)}


def _manifest(kind: str, name: str, io: dict[str, Any], parts: dict[str, Any], opset: int) -> dict[str, Any]:
    import onnx
    import openvino as ov
    import torch

    return {
        "kind": kind,
        "name": name,
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": [-1, SIZE, SIZE, 3],
                  "preprocess": PREPROCESS.to_dict()},
        "labels": list(LABELS),
        "opset": opset,
        "precision": "fp32",
        "versions": {"torch": str(torch.__version__), "onnx": str(onnx.__version__), "openvino": str(ov.get_version())},
        "io": io,
        "parts": parts,
    }


def build_split_bundle(dest: Path, *, seed: int = 0, name: str = "tiny-split") -> Path:
    """A split bundle: encoder.onnx (image -> symbols), decoder.onnx (symbols -> logits), OpenVINO IR, tables."""
    import onnx
    import torch

    encoder, decoder, _ = _modules(seed)
    image = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    symbols = torch.randint(-3, 4, (2, *LATENT), dtype=torch.int32)
    with BundleWriter(dest) as writer:
        writer.path("openvino/x").parent.mkdir(parents=True, exist_ok=True)
        parts: dict[str, Any] = {}
        io: dict[str, Any] = {}
        for part, module, example, inp, out in (("encoder", encoder, image, "image", "symbols"),
                                                ("decoder", decoder, symbols, "symbols", "logits")):
            onnx_path = writer.path(f"{part}.onnx")
            ov_files = _export(module, example, inp, out, onnx_path, onnx_path.parent / "openvino", part)
            parts[part] = {"onnxruntime": {"model": f"{part}.onnx"}, "openvino": ov_files}
            io[part] = _io(onnx_path)
        scales = np.linspace(0.5, 3.0, LATENT[0])
        codec = FactorizedCodec(*discretized_laplace_pmfs(scales, HALF_WIDTH))
        np.savez(writer.path("codec.npz"), **codec.to_arrays())
        opset = max(o.version for o in onnx.load(str(writer.path("encoder.onnx"))).opset_import if o.domain == "")
        manifest = _manifest("split", name, io, parts, opset)
        manifest["codec"] = {"id": codec.codec_id, "file": "codec.npz", "latent_shape": list(LATENT)}
        manifest["train_split"] = {"val_fraction": 0.25, "seed": 0}
        writer.commit(manifest)
    return dest


def build_sibling_bundle(dest: Path, source: Path, *, name: str = "tiny-split-other") -> Path:
    """Another split bundle with the same graphs and latent shape but other codec tables, hence another
    fingerprint: what a device running a different model version would send. No export needed."""
    src = Bundle.open(source)
    with BundleWriter(dest) as writer:
        for rel in src.manifest["files"]:
            if rel != "codec.npz":
                shutil.copyfile(source / rel, writer.path(rel))
        codec = FactorizedCodec(*discretized_laplace_pmfs(np.linspace(1.0, 4.0, LATENT[0]), HALF_WIDTH))
        np.savez(writer.path("codec.npz"), **codec.to_arrays())
        manifest = {k: v for k, v in src.manifest.items() if k not in ("files", "fingerprint", "format_version")}
        manifest["name"] = name
        writer.commit(manifest)
    return dest


def build_full_bundle(dest: Path, *, seed: int = 0, name: str = "tiny-full") -> Path:
    """A full bundle: model.onnx (image -> logits) and its OpenVINO IR."""
    import onnx
    import torch

    _, _, full = _modules(seed)
    image = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    with BundleWriter(dest) as writer:
        onnx_path = writer.path("model.onnx")
        writer.path("openvino/x").parent.mkdir(parents=True, exist_ok=True)
        ov_files = _export(full, image, "image", "logits", onnx_path, onnx_path.parent / "openvino", "model")
        opset = max(o.version for o in onnx.load(str(onnx_path)).opset_import if o.domain == "")
        parts = {"model": {"onnxruntime": {"model": "model.onnx"}, "openvino": ov_files}}
        writer.commit(_manifest("full", name, {"model": _io(onnx_path)}, parts, opset))
    return dest


def cached(tmp_path_factory: pytest.TempPathFactory, key: str, build: Any, **kwargs: Any) -> Path:
    """Build each bundle once per test session, whichever test module asks first."""
    with _lock:
        if key not in _built:
            _built[key] = build(tmp_path_factory.mktemp("bundles") / key, **kwargs)
        return _built[key]


@pytest.fixture(scope="session")
def split_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    return cached(tmp_path_factory, "split", build_split_bundle)


def random_payloads(bundle: Path, n: int, seed: int) -> list[bytes]:
    """``n`` payloads of random 40x48 images, encoded by ``bundle``'s DeviceEncoder."""
    from edgesplit.runtime import DeviceEncoder

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(n)]
    return DeviceEncoder.open(bundle, threads=1).encode_batch(images)


@pytest.fixture(scope="module")
def decoder(split_bundle: Path) -> Any:
    """One ServerDecoder of ``split_bundle`` per test module."""
    from edgesplit.runtime import ServerDecoder

    return ServerDecoder.open(split_bundle, threads=1)


@pytest.fixture(scope="session")
def other_split_bundle(tmp_path_factory: pytest.TempPathFactory, split_bundle: Path) -> Path:
    """Same graphs and shapes, other tables: a payload from it must be refused by ``split_bundle``'s decoder."""
    return cached(tmp_path_factory, "other", build_sibling_bundle, source=split_bundle)


@pytest.fixture(scope="session")
def full_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return cached(tmp_path_factory, "full", build_full_bundle)


def calibrated_binary(model: Any, size: int = 32, seed: int | None = 1) -> Any:
    """A binary student with random BatchNorm affines and running statistics from two training-mode batches, in
    eval mode: untrained weights whose activations still straddle the binarization thresholds."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if type(m).__name__ == "RPReLU":  # trained-looking: shifted, some negative slopes
                m.shift_in.uniform_(-0.3, 0.3)
                m.slope.uniform_(-0.3, 0.8)
                m.shift_out.uniform_(-0.3, 0.3)
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()
