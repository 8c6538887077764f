"""The example third-party plugin installs into the environment and is found through the entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_plugin_example_installs_and_registers(tmp_path: Path) -> None:
    src = tmp_path / "plugin_example"
    shutil.copytree(REPO / "samples" / "plugin_example", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", str(src)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    try:
        out = subprocess.run([sys.executable, "-m", "edgesplit.cli", "plugins", "--strict"], check=True,
                             capture_output=True, text=True).stdout
        backbones = next(line for line in out.splitlines() if line.startswith("backbone:"))
        assert "tinynet" in backbones and "plainnet" in backbones
        code = ("import torch, edgesplit; m = edgesplit.create('backbone', 'tinynet', num_classes=3).eval(); "
                "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
        shape = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert shape.strip() == "(1, 3)"
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "edgesplit-tinynet"],
                       check=False, capture_output=True)


@pytest.fixture()
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plugin as if installed: its source on ``sys.path`` and its entry point beside edgesplit's own;
    the registry is restored afterwards."""
    from importlib import metadata

    from edgesplit import registry

    registry.load_plugins()
    saved = {k: dict(v) for k, v in registry._components.items()}
    saved_origins = dict(registry._origins)
    monkeypatch.syspath_prepend(str(REPO / "samples" / "plugin_example" / "src"))
    eps = [*metadata.entry_points(group=registry.ENTRY_POINT_GROUP),
           metadata.EntryPoint("tinynet", "edgesplit_tinynet", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    registry.load_plugins(force=True)
    yield
    for k in registry._components:
        registry._components[k].clear()
        registry._components[k].update(saved[k])
    registry._origins.clear()
    registry._origins.update(saved_origins)
    for name in [m for m in sys.modules if m == "edgesplit_tinynet" or m.startswith("edgesplit_tinynet.")]:
        monkeypatch.delitem(sys.modules, name)


def test_a_plain_torch_teacher_from_a_plugin_becomes_a_served_split_student(example_plugin: None,
                                                                           tmp_path: Path) -> None:
    """The plugin's ``plainnet`` (plain torch layers, wrapped with ``wrap_module``) is found through the entry point;
    its split student trains, round-trips as a checkpoint, exports, and a payload decodes through ServerDecoder."""
    torch = pytest.importorskip("torch", reason="needs torch (pip install edgesplit[train])")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install edgesplit[onnxruntime])")
    import numpy as np

    from edgesplit import create, registry
    from edgesplit.export import export_checkpoint
    from edgesplit.interfaces import SplitModel, Teacher
    from edgesplit.preprocess import Preprocess
    from edgesplit.runtime import DeviceEncoder, ServerDecoder
    from edgesplit.train import load, save_checkpoint, to_input

    assert registry.get("backbone", "plainnet").__module__ == "edgesplit_tinynet.plainnet"
    labels, spec = ["a", "b", "c"], Preprocess.for_size(64)
    torch.manual_seed(0)
    teacher = create("backbone", "plainnet", num_classes=3, width=8)
    assert isinstance(teacher, Teacher)
    assert teacher.stage_strides == {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16}
    with torch.no_grad():
        teacher.train()(torch.randn(8, 3, 64, 64))  # BatchNorm statistics that are not the init's
    teacher_path = tmp_path / "teacher.safetensors"
    save_checkpoint(teacher.eval(), teacher_path, labels=labels, preprocess=spec.to_dict(),
                    model_config={"kind": "backbone", "name": "plainnet", "params": {"num_classes": 3, "width": 8}})

    student = create("student", "entropic", teacher=str(teacher_path), cut="layer1", bottleneck_channels=4,
                     encoder_channels=8, decoder_channels=8, tune_tail=["layer2"])
    assert isinstance(student, SplitModel)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = load(teacher_path)(x)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    losses = []
    student.train()
    for _ in range(5):
        out = student.forward_train(x)
        loss = torch.nn.functional.mse_loss(out["logits"], target) + 1e-3 * out["bits"] / len(x) + out["aux"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    moved = [n for n, p in student.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(n.startswith("encoder.") for n in moved) and any(n.startswith("tail.") for n in moved)

    ckpt = tmp_path / "student.safetensors"
    save_checkpoint(student.eval(), ckpt, labels=labels, preprocess=spec.to_dict(),
                    model_config={"kind": "student", "name": "entropic", "params": student.recipe_params})
    again = load(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(again(x), student(x))  # the tuned tail stage was saved with the student

    bundle = export_checkpoint(ckpt, tmp_path / "bundle", formats="onnx", calib_images=6, threads=1)
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with DeviceEncoder.open(bundle.path) as encoder, ServerDecoder.open(bundle.path) as decoder:
        payload = encoder.encode(image)
        prediction = decoder.decode(payload)
        crop = encoder.preprocess([image])
    assert isinstance(payload, bytes) and prediction.classes[0] in labels
    with torch.no_grad():
        expected = student(to_input(crop, spec))[0].numpy()
    np.testing.assert_allclose(prediction.logits, expected, rtol=0, atol=1e-3)
