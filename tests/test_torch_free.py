"""The device-side modules must import without torch (DESIGN.md: torch-free core and runtime)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MODULES = ["edgesplit", "edgesplit.errors", "edgesplit.registry", "edgesplit.config", "edgesplit.codec",
           "edgesplit.bitstream", "edgesplit.preprocess", "edgesplit.data", "edgesplit.cli", "edgesplit.runtime",
           "edgesplit.runtime.backends", "edgesplit.runtime.binary_graph", "edgesplit.binary_net",
           "edgesplit.interfaces", "edgesplit.checkpoint"]


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_torch_out(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", f"importing {module} imported torch"


def test_bundle_import_leaves_torch_out() -> None:
    pytest.importorskip("edgesplit.bundle")
    code = "import sys, edgesplit.bundle; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _numpy_binary_bundle(root: Path) -> Path:
    """A full bundle whose one part is a 1-bit network for OpenVINO (``binary-v1``), written from numpy arrays:
    two Bi-Real blocks (8 -> 8, then 8 -> 16 with a stride-2 average-pool + 1x1 shortcut), 3 classes."""
    from edgesplit.bundle import BundleWriter
    from edgesplit.preprocess import Preprocess
    from edgesplit.binary_net import BUILDER, BinaryUnit, Block, InputSpec, LoweredNet, RealConv, save_net

    rng = np.random.default_rng(0)
    spec = Preprocess.for_size(32)

    def floats(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def unit(cin: int, cout: int, stride: int) -> BinaryUnit:
        signs = np.where(rng.random((cout, cin, 3, 3)) > 0.5, 1.0, -1.0).astype(np.float32)
        return BinaryUnit(floats(cin), signs, np.abs(floats(cout)) + 0.05, np.ones(cout, np.float32), floats(cout),
                          stride, 1)

    net = LoweredNet(RealConv(floats(8, 3, 7, 7), floats(8), 2, 3),
                     [Block(unit(8, 8, 1), unit(8, 8, 1), 1, None),
                      Block(unit(8, 16, 2), unit(16, 16, 1), 2, RealConv(floats(16, 8, 1, 1), floats(16), 1, 0))],
                     floats(3, 16), floats(3))
    with BundleWriter(root) as writer:
        save_net(writer.path("binary/model.npz"), net, InputSpec(spec.size, spec.mean, spec.std))
        writer.commit({
            "kind": "full", "name": "numpy-binary", "labels": ["a", "b", "c"],
            "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": [-1, spec.size, spec.size, 3],
                      "preprocess": spec.to_dict()},
            "parts": {"model": {"openvino": {"builder": BUILDER, "model": "binary/model.npz"}}},
        })
    return root


BINARY_RUN = """
import sys
import numpy as np
from edgesplit.runtime import DeviceModel
model = DeviceModel.open(sys.argv[1], backend="openvino", threads=1)
images = list(np.random.default_rng(1).integers(0, 256, size=(3, 40, 36, 3), dtype=np.uint8))
predictions = model.predict_batch(images)
assert len(predictions) == 3 and all(np.isfinite(p.logits).all() for p in predictions)
assert model.session.binary_convolutions == 4, model.session.info()
print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))
"""


def test_binary_bundle_loads_and_runs_without_torch(tmp_path: Path) -> None:
    """A binary bundle's OpenVINO part (packed file -> BinaryConvolution graph) is read, built and run without
    torch; the bundle itself is written here from numpy arrays, so this test needs no torch either."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install edgesplit[openvino])")
    bundle = _numpy_binary_bundle(tmp_path / "binary")
    run = subprocess.run([sys.executable, "-c", BINARY_RUN, str(bundle)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
