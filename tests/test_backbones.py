"""Every registered backbone: shapes per stage, cutting and resuming, backward, MACs, ONNX export parity."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator

import pytest

torch = pytest.importorskip("torch", reason="backbones need torch (pip install edgesplit[train])")

from edgesplit import registry  # noqa: E402
from edgesplit.plugins.backbones import STAGES, Backbone, count_macs  # noqa: E402

BACKBONES = registry.available("backbone")
NUM_CLASSES = 10
BATCH, SIZE = 2, 64

# Exporting takes seconds per model, so a model whose graph uses only the layers of an exported sibling is
# exported only with EDGESPLIT_TEST_ALL_EXPORTS=1. A new model is exported unless it is listed here.
_EXPORT_COVERED_BY: dict[str, str] = {
    "resnet34": "resnet18",
    "mobilenetv2_050": "mobilenetv2_035",
    "mobilenetv2_075": "mobilenetv2_035",
    "mobilenetv2_100": "mobilenetv2_035",
    "mobilenetv2": "mobilenetv2_035",
    "vovnet39": "vovnet19",
}
_ALL_EXPORTS = os.environ.get("EDGESPLIT_TEST_ALL_EXPORTS", "") not in ("", "0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export_params() -> list[object]:
    params: list[object] = []
    for name in BACKBONES:
        covered_by = _EXPORT_COVERED_BY.get(name)
        marks = []
        if covered_by is not None and not _ALL_EXPORTS:
            reason = f"same layers as {covered_by} (exported); EDGESPLIT_TEST_ALL_EXPORTS=1 exports it too"
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _build(name: str) -> Backbone:
    torch.manual_seed(0)
    model = registry.create("backbone", name, num_classes=NUM_CLASSES)
    assert isinstance(model, Backbone)
    return model


def _input() -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _calibrated(model: Backbone, x: torch.Tensor) -> Backbone:
    """Eval-mode model whose normalization statistics come from ``x``: at initialization (mean 0, variance 1)
    some backbones shrink activations to ~1e-9, which would make every comparison below vacuous."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_stages_shapes_and_cut(name: str) -> None:
    model = _build(name)
    x = _input()
    model = _calibrated(model, x)
    assert model.stage_names == STAGES
    assert set(model.stage_channels) == set(STAGES[:-1])
    assert set(model.stage_strides) == set(STAGES[:-1])
    with torch.no_grad():
        full = model(x)
        assert full.shape == (BATCH, NUM_CLASSES)
        assert full.abs().mean() > 1e-3  # a signal, not numerical dust
        for stage in STAGES:
            assert isinstance(model.stage(stage), torch.nn.Module)
            feat, kept = model.forward_stages(x, until=stage, keep=[stage])
            assert kept[stage] is feat
            if stage != "head":
                side = SIZE // model.stage_strides[stage]
                assert feat.shape == (BATCH, model.stage_channels[stage], side, side), stage
            rest, _ = model.forward_stages(feat, after=stage)
            torch.testing.assert_close(rest, full, rtol=1e-5, atol=1e-5, msg=f"cut after {stage}")


@pytest.mark.parametrize("name", BACKBONES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = _build(name).train()
    model(_input()).logsumexp(1).sum().backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    # blocks may start as identities (zero-initialized norm scales) but the signal reaches both ends
    first, last = next(iter(params.values())), params["head.fc.weight"]
    assert first.grad.abs().sum() > 0 and last.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_macs_and_params(name: str) -> None:
    model = _build(name)
    assert count_macs(model, _input()[:1]) > 0
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params(["head"]) == sum(p.numel() for p in model.head.parameters())


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _recorded_logs() -> Iterator[_Records]:
    """Records from the root logger and from every logger that does not propagate to it (``torch.onnx``)."""
    handler = _Records()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_export_coverage_map_names_exported_models() -> None:
    for name, representative in _EXPORT_COVERED_BY.items():
        assert representative in BACKBONES and representative not in _EXPORT_COVERED_BY, (name, representative)


@pytest.mark.parametrize("name", _export_params())
def test_onnx_export_matches_torch(name: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx and onnxscript (pip install edgesplit[export])")
    pytest.importorskip("onnxscript", reason="the torch.onnx dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="parity check needs onnxruntime (pip install edgesplit[onnxruntime])")
    x = _input()
    model = _calibrated(_build(name), x)
    path = tmp_path / f"{name}.onnx"
    import torch.onnx  # noqa: F401  (creates its loggers before they are listed)

    with warnings.catch_warnings(record=True) as caught, _recorded_logs() as logs:
        warnings.simplefilter("always")
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18)
    printed = capsys.readouterr()
    said = [str(w.message) for w in caught] + logs.messages + [printed.out, printed.err]
    unsupported = [s for s in said if "unsupported" in s.lower()]
    assert not unsupported, unsupported

    onnx.checker.check_model(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_sized_mobilenetv2_names_fix_their_width() -> None:
    from edgesplit.errors import ConfigError

    def channels(name: str, **params: object) -> dict[str, int]:
        return registry.create("backbone", name, num_classes=NUM_CLASSES, **params).stage_channels

    for name, width in (("mobilenetv2_035", 0.35), ("mobilenetv2_050", 0.5), ("mobilenetv2_075", 0.75),
                        ("mobilenetv2_100", 1.0)):
        assert channels(name) == channels("mobilenetv2", width=width)
        with pytest.raises(ConfigError, match=f"'{name}' is MobileNetV2 at width {width} and takes no width; "
                                              "for width 0.6 use backbone 'mobilenetv2' with width: 0.6"):
            channels(name, width=0.6)
    assert channels("mobilenetv2_050") != channels("mobilenetv2_075")


def test_a_full_student_is_found_under_kind_student() -> None:
    from edgesplit.errors import PluginError

    student = registry.create("student", "mobilenetv2_035", num_classes=NUM_CLASSES)
    assert type(student) is type(_build("mobilenetv2_035"))
    assert student.stage_channels == _build("mobilenetv2_035").stage_channels
    assert "mobilenetv2_035" not in registry.available("student")  # listed once, as a backbone
    with pytest.raises(PluginError, match="known students: .*entropic.*; and every backbone as a full student"):
        registry.get("student", "no_such_student")


@pytest.mark.parametrize("name", BACKBONES)
def test_unknown_stage_is_a_config_error_naming_the_stages(name: str) -> None:
    from edgesplit.errors import ConfigError

    model = _build(name)
    assert model.stage("stage2") is getattr(model, "stage2")
    with pytest.raises(ConfigError, match="unknown stage 'stage9'; stages are stem, stage1, stage2"):
        model.stage("stage9")
