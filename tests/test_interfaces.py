"""Every registered first-party component satisfies its ``edgesplit.interfaces`` protocol and behaves as it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgesplit import interfaces, registry
from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs
from edgesplit.errors import BackendUnavailable, PluginError

torch = pytest.importorskip("torch", reason="the model checks need torch (pip install edgesplit[train])")

from edgesplit.preprocess import Preprocess  # noqa: E402
from edgesplit.train.checkpoint import save_checkpoint  # noqa: E402

SIZE = 64


def _first_party(kind: str) -> list[str]:
    return [n for n in registry.available(kind) if registry.get(kind, n).__module__.startswith("edgesplit.")]


def test_interfaces_import_without_torch() -> None:
    code = "import sys, edgesplit.interfaces; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_protocols_reject_what_lacks_their_members() -> None:
    class HalfSplit:
        def encode_symbols(self, x: Any) -> Any:
            return x

    assert not isinstance(HalfSplit(), interfaces.SplitModel)
    assert not isinstance(object(), interfaces.EntropyCodec)
    assert not isinstance(torch.nn.Linear(2, 2), interfaces.Teacher)
    assert not isinstance(torch.nn.Linear(2, 2), interfaces.SplitModel)
    assert isinstance(torch.nn.Linear(2, 2), interfaces.FullModel)


# -- codecs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _first_party("codec"))
def test_codec_conforms(name: str) -> None:
    pmfs, offsets = discretized_laplace_pmfs(np.array([0.5, 2.0, 6.0]), 12)
    tables = FactorizedCodec(pmfs, offsets, codec_id=name).to_arrays()  # a bundle's tables, as exported
    codec = registry.create("codec", name, tables=tables)
    assert isinstance(codec, interfaces.EntropyCodec)
    assert codec.codec_id == name and codec.num_channels == 3
    rng = np.random.default_rng(0)
    symbols = np.round(rng.laplace(size=(3, 5, 7)) * np.array([0.5, 2.0, 6.0]).reshape(3, 1, 1)).astype(np.int32)
    symbols[2, 0, 0] = 1 << 20  # outside every table: the escape path
    payload = codec.encode(symbols)
    np.testing.assert_array_equal(codec.decode(payload, symbols.shape), symbols)
    assert codec.information_bits(symbols) > 0
    again = type(codec).from_arrays(codec.to_arrays(), codec_id=codec.codec_id)
    assert isinstance(again, interfaces.EntropyCodec) and again.encode(symbols) == payload


# -- backends -----------------------------------------------------------------------------------------------------
def _identity_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install edgesplit[export])")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    opsets = [helper.make_opsetid("", 18)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", _first_party("backend"))
def test_backend_session_conforms(name: str, tmp_path: Path) -> None:
    from edgesplit.runtime.backends import open_session

    path = _identity_onnx(tmp_path / "relu.onnx")
    device = "cuda" if name == "tensorrt" else "cpu"
    try:
        session = open_session(name, path, device)
    except BackendUnavailable as exc:
        pytest.skip(f"backend {name} is not available here: {exc}")
    with session:
        assert isinstance(session, interfaces.BackendSession)
        assert session.backend == name and session.device == device
        assert session.input_names == ["x"] and session.output_names == ["y"]
        out = session.run({"x": np.array([[-1.0, 0.5, 2.0]], np.float32)})
        np.testing.assert_array_equal(out["y"], [[0.0, 0.5, 2.0]])
        assert {"backend", "device", "threads"} <= set(session.info())


def test_a_backend_whose_session_does_not_conform_is_a_plugin_error(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from edgesplit.runtime.backends import open_session

    monkeypatch.setitem(registry._components["backend"], "half-done", lambda path, **kw: object())
    with pytest.raises(PluginError, match="not an edgesplit.interfaces.BackendSession"):
        open_session("half-done", tmp_path / "model.onnx")


# -- backbones (teachers) -----------------------------------------------------------------------------------------
def check_teacher(model: Any, size: int = SIZE) -> None:
    """The ``Teacher`` contract: stages run in order are the forward pass; channels and strides are true."""
    assert isinstance(model, interfaces.Teacher) and isinstance(model, interfaces.FullModel)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    stages = [s for s in model.stage_names if s in model.stage_channels]
    assert model.stage_names[-1] not in model.stage_channels  # the head has no channels/stride
    with torch.no_grad():
        logits, kept = model.forward_stages(x, keep=stages)
        torch.testing.assert_close(logits, model(x))
        assert logits.shape == (2, model.num_classes)
        for s in stages:
            assert kept[s].shape[1] == model.stage_channels[s], s
            assert size // kept[s].shape[-1] == model.stage_strides[s], s
            rest, _ = model.forward_stages(kept[s], after=s)
            torch.testing.assert_close(rest, logits)
    first = model.stage_names[0]
    model.replace_stage(first, torch.nn.Identity())
    assert isinstance(model.stage(first), torch.nn.Identity)


@pytest.mark.parametrize("name", _first_party("backbone"))
def test_backbone_is_a_teacher(name: str) -> None:
    torch.manual_seed(0)
    model = registry.create("backbone", name, num_classes=3)
    check_teacher(model)


# -- bottlenecks --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _first_party("bottleneck"))
def test_bottleneck_conforms(name: str) -> None:
    b = registry.create("bottleneck", name, channels=4).eval()
    assert isinstance(b, interfaces.Bottleneck) and b.channels == 4
    y = torch.randn(2, 4, 3, 3) * 3
    symbols = b.quantize_symbols(y)
    assert symbols.dtype == torch.int32
    assert (b.dequantize(symbols) - y).abs().max() <= 0.5 + 1e-5
    codec = b.codec()
    assert isinstance(codec, interfaces.EntropyCodec) and codec.num_channels == 4
    s = symbols[0].numpy()
    np.testing.assert_array_equal(codec.decode(codec.encode(s), s.shape), s)


# -- students -----------------------------------------------------------------------------------------------------
def _teacher_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = registry.create("backbone", "resnet18", num_classes=3, width=0.125)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, SIZE, SIZE))
    save_checkpoint(model.eval(), path, model_config={"kind": "backbone", "name": "resnet18",
                                                      "params": {"num_classes": 3, "width": 0.125}},
                    labels=["a", "b", "c"], preprocess=Preprocess.for_size(SIZE).to_dict())
    return path


# the smallest recipe of every first-party student; a new student fails test_every_student_has_a_recipe
STUDENTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "entropic": lambda tmp: {"teacher": str(_teacher_checkpoint(tmp / "teacher.safetensors")), "cut": "stage1",
                             "bottleneck_channels": 4, "encoder_channels": 8, "decoder_channels": 8},
    "binary": lambda tmp: {"layers": [1, 1, 1, 1], "width": 0.125, "num_classes": 3},
    "qat": lambda tmp: {"backbone": "resnet18", "backbone_params": {"width": 0.125}, "num_classes": 3},
}


def test_every_student_has_a_recipe() -> None:
    assert set(_first_party("student")) <= set(STUDENTS)


@pytest.mark.parametrize("name", _first_party("student"))
def test_student_conforms(name: str, tmp_path: Path) -> None:
    params = STUDENTS[name](tmp_path)
    torch.manual_seed(1)
    model = registry.create("student", name, **params).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if isinstance(model, interfaces.SplitModel):
            symbols = model.encode_symbols(x)
            assert not torch.is_floating_point(symbols)
            assert tuple(symbols.shape[1:]) == tuple(model.latent_shape(SIZE, SIZE))
            logits = model.decode_symbols(symbols)
            torch.testing.assert_close(model(x), logits)
            codec = model.codec()
            assert isinstance(codec, interfaces.EntropyCodec) and codec.num_channels == symbols.shape[1]
            s = symbols[0].to(torch.int32).numpy()
            np.testing.assert_array_equal(codec.decode(codec.encode(s), s.shape), s)
        else:
            assert isinstance(model, interfaces.FullModel)
            logits = model(x)
            if isinstance(model, interfaces.Exportable):
                torch.testing.assert_close(model.export_module().eval()(x), logits, atol=1e-4, rtol=1e-4)
    assert logits.shape == (2, 3)


def test_exporter_and_evaluator_use_the_protocols() -> None:
    """A split model is whatever satisfies SplitModel: the exporter's test is the protocol, not an attribute."""
    from edgesplit.export._graphs import is_split

    class Duck(torch.nn.Module):
        def encode_symbols(self, x: Any) -> Any:
            return x

        def decode_symbols(self, s: Any) -> Any:
            return s

    assert not is_split(Duck())  # no codec() and latent_shape(): not a SplitModel, exported as one graph

    class Split(Duck):
        def codec(self) -> Any:
            return None

        def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
            return (3, height, width)

    assert is_split(Split())
