"""Quantized and binary students: estimator gradients, LSQ ranges, packed checkpoints, training steps, and the
OpenVINO 1-bit and ONNX Runtime INT8 exports against torch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="quantized students need torch (pip install edgesplit[train])")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgesplit import registry  # noqa: E402
from edgesplit.errors import ConfigError, PluginError  # noqa: E402
from edgesplit.binary_net import RPReLU as LoweredRPReLU  # noqa: E402
from edgesplit.plugins.quant import (  # noqa: E402
    BinaryConv2d,
    BinaryResNet,
    LsqQuantizer,
    QConv2d,
    QLinear,
    binarize,
    create_estimator,
    pack_signs,
    storage_report,
    unpack_signs,
)
from edgesplit.plugins.quant.binary import BiPer, ReSTE, binary_layers  # noqa: E402
from .runtime_fixtures import calibrated_binary  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_BINARY = {"layers": [1, 1, 1, 1], "width": 0.125, "num_classes": 5}


def _grad_of(est: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    upstream = torch.linspace(0.5, 2.0, x.numel()).view_as(x)  # nonzero, so grad / upstream is defined
    (est(x) * upstream).sum().backward()
    return x.grad / upstream


# -- binarization and estimators ---------------------------------------------------------------------------

def test_binarize_maps_zero_to_minus_one() -> None:
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    assert binarize(x).tolist() == [-1, -1, -1, -1, 1, 1]  # torch.sign would give 0 at zero


def test_clipped_ste_gradient() -> None:
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.7, 1.0, 1.01])
    est = create_estimator("ste", {"clip": 1.0})
    assert torch.equal(est(x), binarize(x))
    assert torch.allclose(_grad_of(est, x), (x.abs() <= 1).float())


def test_approx_sign_gradient() -> None:
    x = torch.tensor([-1.5, -0.5, -0.1, 0.0, 0.25, 0.9, 1.2])
    assert torch.allclose(_grad_of(create_estimator("approx_sign"), x), (2 - 2 * x.abs()).clamp_min(0))


def test_reste_gradient_and_schedule() -> None:
    est = create_estimator("reste", {"o_end": 3.0, "t": 1.5, "interval": 0.1})
    est.set_progress(0.0)
    assert est.o == 1.0
    est.set_progress(1.0)
    assert est.o == pytest.approx(3.0)
    est.set_progress(0.5)
    o = 1 + 2 * (1 - math.cos(math.pi / 4))
    assert est.o == pytest.approx(o)
    x = torch.tensor([-2.0, -1.5, -0.7, -0.1, -0.05, 0.0, 0.02, 0.1, 0.3, 1.2, 1.5, 1.6])
    a = x.abs()
    expected = torch.where(a <= 0.1, torch.full_like(a, 0.1 ** (1 / o) / 0.1), (1 / o) * a ** (1 / o - 1))
    expected = torch.where(a <= 1.5, expected, torch.zeros_like(a))
    assert torch.equal(est(x), binarize(x))
    assert torch.allclose(_grad_of(est, x), expected, rtol=1e-5)
    est.set_progress(0.0)  # o = 1: a clipped STE at t
    assert torch.allclose(_grad_of(est, x), (a <= 1.5).float())


def test_biper_forward_and_gradient() -> None:
    w0 = 8.0
    est = create_estimator("biper", {"omega0": w0})
    x = torch.linspace(-1, 1, 41)
    assert torch.equal(est(x), binarize(torch.sin(w0 * x)))
    assert torch.allclose(_grad_of(est, x), w0 * torch.cos(w0 * x), atol=1e-5)


def test_estimators_are_registry_kind_estimator() -> None:
    assert {"ste", "reste", "biper", "approx_sign", "real"} <= set(registry.available("estimator"))
    est = registry.create("estimator", "reste", o_end=3.0)
    assert type(est) is ReSTE and est.name == "reste"
    assert type(create_estimator("biper", {"omega0": 4.0})) is BiPer
    with pytest.raises(AttributeError, match="registry kind 'estimator'"):
        import edgesplit.plugins.quant as quant

        quant.ESTIMATORS  # noqa: B018


def test_estimator_errors_name_the_problem() -> None:
    with pytest.raises(PluginError, match="unknown estimator 'nope'.*known estimators: .*biper.*reste.*ste"):
        create_estimator("nope")
    with pytest.raises(PluginError, match="cannot build estimator 'reste' with parameters \\['omega0'\\]"):
        create_estimator("reste", {"omega0": 3})
    with pytest.raises(PluginError, match="unknown estimator 'nope'"):
        registry.create("student", "binary", num_classes=2, estimator="nope")
    with pytest.raises(ConfigError, match="learnable"):
        BinaryConv2d(4, 4, weight_estimator=create_estimator("biper"), scale="mean_abs")


# -- LSQ ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_quantizer_range_and_rounding(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2, 6).view(-1, 1, 1, 1)
    q = LsqQuantizer(bits, per_channel=True, channels=6, signed=True)
    out = q(w)
    ints = q.integers(w)
    assert ints.min() >= -(2 ** (bits - 1)) and ints.max() <= 2 ** (bits - 1) - 1
    assert int(ints.abs().max()) == 2 ** (bits - 1) - 1  # max init: each channel's largest |w| maps to +-Qp
    s = q.scale.detach().view(-1, 1, 1, 1)
    assert torch.allclose(out, ints.float() * s)
    assert torch.allclose(out, torch.clamp(torch.round(w / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s)


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_quantizer_picks_sign_from_data(bits: int) -> None:
    relu_out = torch.relu(torch.randn(2, 4, 5, 5))
    q = LsqQuantizer(bits)
    q(relu_out)
    assert not bool(q.signed) and q.bounds() == (0, 2**bits - 1)
    assert q.integers(relu_out * 3).min() == 0 and q.integers(relu_out * 3).max() == 2**bits - 1
    q2 = LsqQuantizer(bits)
    q2(torch.randn(2, 4, 5, 5))
    assert bool(q2.signed) and q2.bounds() == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def test_lsq_step_gradient() -> None:
    q = LsqQuantizer(4, signed=True)
    with torch.no_grad():
        q.scale.fill_(0.5)
        q.initialized.fill_(True)
    x = torch.tensor([-9.0, -1.3, -0.2, 0.0, 0.6, 1.74, 2.9, 7.0])
    x.requires_grad_(True)
    q(x).sum().backward()
    v = x.detach() / 0.5
    qn, qp = -8, 7
    ds = torch.where(v <= qn, float(qn), torch.where(v >= qp, float(qp), torch.round(v) - v))
    g = 1 / math.sqrt(x.numel() * qp)
    assert q.scale.grad.item() == pytest.approx(float(ds.sum()) * g, rel=1e-5)
    assert torch.equal(x.grad, ((v >= qn) & (v <= qp)).float())  # STE inside the range, 0 outside


def test_quantize_model_keeps_first_and_last_at_8_bits() -> None:
    model = registry.create("student", "qat", backbone="resnet18", backbone_params={"width": 0.125}, weight_bits=4,
                            act_bits=4, num_classes=3)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))]
    assert not [n for n, m in model.named_modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear)]
    assert layers[0][0] == "stem.0" and layers[0][1].weight_quant.bits == 8
    assert layers[-1][0] == "head.fc" and layers[-1][1].act_quant.bits == 8
    assert {m.weight_quant.bits for _, m in layers[1:-1]} == {4}


# -- BatchNorm folded into quantized convolutions (export) --------------------------------------------------

def _batchnorm(gamma: list[float], beta: list[float], mean: list[float], var: list[float]) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(len(gamma), eps=1e-3).eval()
    with torch.no_grad():
        for t, v in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.tensor(v))
    return bn


def test_fold_batchnorm_keeps_integers_and_negates_negative_channels() -> None:
    """BatchNorm(conv(x, q s)) == conv(x, q' s') + b' with q' = sign(f) q, s' = s |f|, b' = beta - mean f (f the
    BatchNorm factor); a channel with f == 0 keeps only its bias. Same outputs within float32 rounding."""
    from edgesplit.plugins.quant._bn_fold import fold_batchnorm

    torch.manual_seed(0)
    q = torch.randint(-8, 8, (4, 3, 3, 3), dtype=torch.int32)
    q[1, 0, 0, 0] = -8  # the 4-bit grid's -8: +8 after negation, still int8
    s = torch.tensor([0.02, 0.05, 0.01, 0.03])
    bias = torch.tensor([0.1, -0.2, 0.3, 0.0])
    bn = _batchnorm([1.5, -0.7, 0.0, -2.0], [0.1, 0.2, -0.3, 0.4], [0.5, -0.1, 0.2, 0.0], [0.8, 2.0, 1.0, 0.3])
    folded = fold_batchnorm(q, s, bn, conv_bias=bias)
    assert folded is not None
    f = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)  # from the float32 parameters
    sign = torch.tensor([1, -1, 0, -1], dtype=torch.int32).view(-1, 1, 1, 1)
    assert folded.integers.dtype == torch.int32 and torch.equal(folded.integers, q * sign)
    assert int(folded.integers[1, 0, 0, 0]) == 8
    want_scale = torch.where(f == 0, s.double(), s.double() * f.abs()).float()
    assert torch.equal(folded.scale, want_scale) and bool((folded.scale > 0).all())
    want_bias = bn.bias.detach().double() + (bias.double() - bn.running_mean.double()) * f
    assert torch.equal(folded.bias, want_bias.float())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = bn(F.conv2d(x, q.float() * s.view(-1, 1, 1, 1), bias))
        got = F.conv2d(x, folded.integers.float() * folded.scale.view(-1, 1, 1, 1), folded.bias)
    # float32 rounding of two algebraically equal expressions: 1e-5 of the output's magnitude (observed <= 1e-6)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_fold_batchnorm_refuses_what_int8_cannot_hold() -> None:
    """The LSQ weight grid is [-2^(b-1), 2^(b-1) - 1]: at 8 bits a negative-factor channel reaching -128 would need
    +128, so that BatchNorm is not folded (None); -128 in a positive channel folds as it is."""
    from edgesplit.plugins.quant._bn_fold import fold_batchnorm

    q = torch.tensor([[-128, 5], [-3, 127]], dtype=torch.int32).view(2, 2, 1, 1)
    s = torch.tensor([0.1, 0.1])
    assert fold_batchnorm(q, s, _batchnorm([-1.0, 1.0], [0, 0], [0, 0], [1, 1])) is None
    folded = fold_batchnorm(q, s, _batchnorm([1.0, -1.0], [0, 0], [0, 0], [1, 1]))
    assert folded is not None and torch.equal(folded.integers.view(2, 2), torch.tensor([[-128, 5], [3, -127]]))
    no_stats = torch.nn.BatchNorm2d(2, track_running_stats=False).eval()
    assert fold_batchnorm(q, s, no_stats) is None  # normalizes with batch statistics even in eval mode


def test_conv_bn_pairs_follow_the_forward() -> None:
    """Pairs come from what forward computes: a BatchNorm reading a convolution whose output nothing else reads,
    and the one quantized layer (if any) that reads the BatchNorm's output, directly or through one activation
    (its clamp range recorded), past Identity modules."""
    from edgesplit.plugins.quant._bn_fold import ConvBn, conv_bn_pairs

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn_a = torch.nn.BatchNorm2d(4)  # registered before its convolution: order does not matter
            self.conv_a = QConv2d(3, 4, 3, padding=1)
            self.conv_b = QConv2d(4, 4, 3, padding=1)
            self.bn_b = torch.nn.BatchNorm2d(4)
            self.conv_c = QConv2d(4, 4, 1)
            self.bn_c = torch.nn.BatchNorm2d(4)
            self.conv_d = QConv2d(4, 4, 1)
            self.bn_d = torch.nn.BatchNorm2d(4)
            self.conv_e = QConv2d(4, 4, 1)
            self.bn_e = torch.nn.BatchNorm2d(4)
            self.skip = torch.nn.Identity()
            self.act = torch.nn.ReLU6()
            self.conv_f = QConv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn_a(self.conv_a(x)))  # -> relu -> conv_b: Conv -> Relu -> Q
            z = self.conv_b(y)
            y = self.bn_b(z) + z  # conv_b's output is read twice: folding would change the second reader
            c = self.bn_c(torch.relu(self.conv_c(y)))  # not directly after the convolution
            d = self.bn_d(self.conv_d(y))  # read by conv_e and by the residual addition: no single next layer
            e = self.conv_f(self.act(self.skip(self.bn_e(self.conv_e(d)))))  # Identity, ReLU6, then conv_f
            return c + e + d

    assert conv_bn_pairs(Net(), (QConv2d, QLinear)) == {
        "conv_a": ConvBn("conv_a", "bn_a", clamp=(0.0, math.inf), next_layer="conv_b"),
        "conv_d": ConvBn("conv_d", "bn_d", clamp=None, next_layer=None),
        "conv_e": ConvBn("conv_e", "bn_e", clamp=(0.0, 6.0), next_layer="conv_f")}

    class Untraceable(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) if bool(x.sum() > 0) else x  # data-dependent Python branch

    assert conv_bn_pairs(Untraceable(), (QConv2d, QLinear)) == {}


# -- training steps ----------------------------------------------------------------------------------------

def test_qat_training_step() -> None:
    torch.manual_seed(0)
    model = registry.create("student", "qat", backbone="resnet18", backbone_params={"width": 0.125}, weight_bits=4,
                            act_bits=4, num_classes=3).train()
    for m in model.modules():  # ResNet starts each residual branch at 0 (zero BN gain), which blocks its gradient
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    conv = model.stage2[0].conv1
    assert conv.weight.grad.abs().sum() > 0
    assert conv.weight_quant.scale.grad.abs().sum() > 0 and conv.act_quant.scale.grad.abs().sum() > 0
    assert not bool(conv.act_quant.signed)  # its input comes after a ReLU


@pytest.mark.parametrize("estimator,params", [("ste", {}), ("reste", {"o_end": 3.0}), ("biper", {"omega0": 8.0})])
def test_binary_training_step(estimator: str, params: dict) -> None:
    torch.manual_seed(0)
    model = registry.create("student", "binary", estimator=estimator, estimator_params=params, **TINY_BINARY)
    model.train()
    model.set_progress(0.5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, kept = model.forward_stages(x, keep={"stage4"})
    assert logits.shape == (4, 5) and kept["stage4"].shape[1] == model.stage_channels["stage4"]
    loss = F.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    conv = model.stage2[0].conv2
    assert conv.weight.grad.abs().sum() > 0 and conv.threshold.grad.abs().sum() > 0
    if conv.scale is not None:
        assert conv.scale.grad.abs().sum() > 0
    if estimator == "reste":
        assert conv.weight_estimator.o == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 4)))


def test_float_student_initialises_quantized_and_binary_students() -> None:
    """``init:`` loads the FP32 student's state dict with strict=False: nothing may be unexpected."""
    fp32 = registry.create("backbone", "resnet18", width=0.125, num_classes=3).state_dict()
    qat = registry.create("student", "qat", backbone="resnet18", backbone_params={"width": 0.125}, weight_bits=8,
                          act_bits=8, num_classes=3)
    missing, unexpected = qat.load_state_dict(fp32, strict=False)
    assert not unexpected and all("_quant." in k for k in missing)
    binary = registry.create("student", "binary", layers=[2, 2, 2, 2], width=0.125, num_classes=3)
    missing, unexpected = binary.load_state_dict(fp32, strict=False)
    assert not unexpected and all(k.endswith(".threshold") for k in missing)


def test_two_step_first_step_keeps_real_weights_and_initialises_the_binary_step(tmp_path: Path) -> None:
    """Step 1 (``estimator: real``): binary activations, real weights, saved unpacked; its latent weights carry
    over unchanged into the step-2 binary student through ``init:``'s state dict, and step 1 has no 1-bit form."""
    from edgesplit.train.checkpoint import load, save_checkpoint

    torch.manual_seed(0)
    kw = dict(TINY_BINARY, estimator="real", activation_estimator="reste")
    step1 = registry.create("student", "binary", **kw)
    conv = step1.stage2[0].conv2
    x = torch.randn(2, conv.in_channels, 8, 8)
    with torch.no_grad():  # real weights: the conv sees W itself, not sign(W)
        xb = binarize(x - conv.threshold.view(1, -1, 1, 1))
        ref = F.conv2d(F.pad(xb, (1, 1, 1, 1), value=-1.0), conv.weight) * conv.channel_scale().view(1, -1, 1, 1)
        assert torch.allclose(conv(x), ref, atol=1e-6)
    logits = step1(torch.randn(2, 3, 32, 32))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert conv.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="real-valued"):
        conv.packed()
    path = tmp_path / "step1.safetensors"
    save_checkpoint(step1, path, model_config={"kind": "student", "name": "binary", "params": kw},
                    labels=list("abcde"), preprocess={})
    reloaded = load(path, eval_mode=False)
    step2 = registry.create("student", "binary", **dict(TINY_BINARY, estimator="reste"))
    missing, unexpected = step2.load_state_dict(reloaded.state_dict(), strict=False)
    assert not missing and not unexpected
    assert torch.equal(step2.stage2[0].conv2.weight, conv.weight)  # real magnitudes, not sign * scale
    assert torch.equal(step2.stage2[0].conv2.binary_weight(), binarize(conv.weight))


# -- packed storage ----------------------------------------------------------------------------------------

def _rprelu_numpy(act: LoweredRPReLU, x: np.ndarray) -> np.ndarray:
    """A lowered (runtime) RPReLU's function on an NCHW array, written out independently of torch."""
    per = (1, -1, 1, 1)
    v = x - act.shift_in.reshape(per)
    return np.where(v >= 0, v, v * act.slope.reshape(per)) + act.shift_out.reshape(per)


def test_rprelu_is_a_shifted_prelu_and_the_lowered_one_computes_it() -> None:
    from edgesplit.plugins.quant import RPReLU
    from edgesplit.plugins.quant._lowering import lower

    act = RPReLU(3)
    assert torch.equal(act.slope, torch.full((3,), 0.25)) and not act.shift_in.any() and not act.shift_out.any()
    with torch.no_grad():
        act.shift_in.copy_(torch.tensor([0.5, -1.0, 0.0]))
        act.slope.copy_(torch.tensor([0.1, -0.5, 1.0]))
        act.shift_out.copy_(torch.tensor([2.0, 0.0, -3.0]))
    x = torch.tensor([1.5, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2).contiguous()
    x[..., 1] = -x[..., 1]
    expected = torch.tensor([[1.0 + 2.0, 0.1 * -2.0 + 2.0], [1.0, 1.0], [-1.0 - 3.0, 1.0 - 3.0]]).view(1, 3, 1, 2)
    torch.testing.assert_close(act(x), expected)
    model = _calibrated(registry.create("student", "binary", **{**TINY_BINARY, "rprelu": True}))
    net = lower(model)
    acts = net.activations()
    assert len(acts) == len(binary_layers(model)) and all(a is not None for a in acts)
    block = model.stage1[0]
    y = torch.randn(2, block.act1.slope.numel(), 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(_rprelu_numpy(net.blocks[0].act1, y.numpy()), block.act1(y).numpy(), rtol=0,
                                   atol=1e-6)
    assert all(a is None for a in lower(_calibrated(registry.create("student", "binary", **TINY_BINARY))).activations())


def test_pack_unpack_round_trip() -> None:
    signs = binarize(torch.randn(3, 5, 3, 3))  # 135 bits: not a multiple of 8
    packed = pack_signs(signs)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(135 / 8)
    assert torch.equal(unpack_signs(packed, signs.shape), signs)


def _calibrated(model: BinaryResNet, size: int = 32) -> BinaryResNet:
    return calibrated_binary(model, size)


@pytest.mark.parametrize("estimator,params", [("ste", {}), ("biper", {"omega0": 8.0})])
def test_packed_checkpoint_reloads_exactly(tmp_path: Path, estimator: str, params: dict) -> None:
    from edgesplit.train.checkpoint import load, save_checkpoint

    torch.manual_seed(0)
    kw = dict(TINY_BINARY, estimator=estimator, estimator_params=params)
    model = registry.create("student", "binary", **kw)
    with torch.no_grad():  # trained-looking latent weights: some beyond BiPer's half period
        for layer in binary_layers(model).values():
            layer.weight.mul_(3)
    _calibrated(model)
    state = model.checkpoint_state_dict()
    assert all(k.replace(".weight_bits", "") in binary_layers(model) for k in state if k.endswith("weight_bits"))
    assert not any(k.endswith("conv1.weight") for k in state)
    path = tmp_path / "binary.safetensors"
    save_checkpoint(model, path, model_config={"kind": "student", "name": "binary", "params": kw}, labels=list("abcde"),
                    preprocess={})
    loaded = load(path)
    for name, layer in binary_layers(model).items():
        other = binary_layers(loaded)[name]
        assert torch.equal(other.binary_weight(), layer.binary_weight())
        assert torch.equal(other.channel_scale(), layer.channel_scale())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_binary_weights_store_over_25x_smaller() -> None:
    model = registry.create("student", "binary", layers=[2, 2, 2, 2], width=0.5, num_classes=10)
    report = storage_report(model)
    assert report["binary_layers"] == 16
    assert report["binary_weight_fp32_bytes"] / report["binary_weight_packed_bytes"] >= 25
    assert report["checkpoint_bytes"] < report["model_fp32_bytes"] / 10


# -- exports -----------------------------------------------------------------------------------------------

def _tiny_trained_binary(width: float = 0.125, rprelu: bool = False) -> tuple[BinaryResNet, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    model = _calibrated(registry.create("student", "binary", estimator="reste",
                                        **{**TINY_BINARY, "width": width, "rprelu": rprelu}))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        stem = model.stem(x)
        ref = model(x).numpy()
    assert (stem == 0).any()  # the first binary layer sees exact zeros: x == threshold is exercised
    return model, x, ref


@pytest.mark.parametrize("width,rprelu", [(0.125, False), (0.19, False), (0.125, True)],
                         ids=["channels_8_to_64", "channels_12_to_97", "rprelu"])
def test_openvino_runs_binary_layers_as_binary_convolution(width: float, rprelu: bool) -> None:
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install edgesplit[openvino])")
    from edgesplit.export.openvino_binary import (
        binary_layer_types,
        build_openvino_model,
        compile_model,
        time_compiled,
    )

    model, x, ref = _tiny_trained_binary(width, rprelu)  # 0.19: channel counts that are not multiples of 8
    n_binary = len(binary_layers(model))
    compiled = compile_model(build_openvino_model(model, tuple(x.shape)))
    types = binary_layer_types(compiled)
    assert types["BinaryConvolution"] == n_binary, types
    # binary conv sums are exact integers on both sides; only the float layers (stem, BN, 1x1 shortcuts, head)
    # round differently, ~1e-7 relative, so 1e-4 absolute on logits of magnitude ~1 leaves a wide margin
    np.testing.assert_allclose(compiled(x.numpy())[0], ref, rtol=0, atol=1e-4)
    dense = compile_model(build_openvino_model(model, tuple(x.shape), binary=False))
    assert binary_layer_types(dense)["BinaryConvolution"] == 0
    np.testing.assert_allclose(dense(x.numpy())[0], ref, rtol=0, atol=1e-4)
    timing = time_compiled(compiled, x.numpy(), runs=3, warmup=1)
    assert timing["runs"] == 3 and 0 < timing["min_ms"] <= timing["median_ms"]


@pytest.mark.parametrize("rprelu", [False, True], ids=["bireal", "rprelu"])
def test_onnx_int8_qdq_export_matches_torch(tmp_path: Path, rprelu: bool) -> None:
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install edgesplit[onnxruntime])")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install edgesplit[export])")
    from onnx import numpy_helper

    from edgesplit.export.onnx_binary import export_binary_onnx

    model, x, ref = _tiny_trained_binary(rprelu=rprelu)
    info = export_binary_onnx(model, tmp_path / "binary.onnx")
    assert info["binary_layers"] == len(binary_layers(model)) and "INT8" in info["note"]
    proto = onnx.load(info["path"])
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == info["binary_layers"]
    assert ops.count("DequantizeLinear") == 2 * info["binary_layers"]
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.startswith("binary_w")]
    assert len(weights) == info["binary_layers"]
    assert all(w.dtype == np.int8 and set(np.unique(w)) <= {-1, 1} for w in weights)
    assert ops.count("PRelu") == (info["binary_layers"] if rprelu else 0)
    session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], ref, rtol=0, atol=1e-4)


# -- recipes -----------------------------------------------------------------------------------------------

def _recipe_stages(path: Path) -> list:
    from edgesplit.recipe import load_recipe, plan_recipe

    return [r.config for r in plan_recipe(load_recipe(path), REPO / "runs" / path.stem, source=str(path)).runs]


@pytest.mark.parametrize("path,stage", [(p, i) for p in sorted((REPO / "configs").glob("student_*.yaml"))
                                        for i in range(len(_recipe_stages(p)))],
                         ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_student_recipes_validate_and_build(path: Path, stage: int) -> None:
    cfg = _recipe_stages(path)[stage]
    assert cfg.seed == 0 and cfg.data.image_size == 128
    assert cfg.teacher == "samples/weights/teacher_resnet18.safetensors"
    params = dict(cfg.model.params)
    if cfg.model.kind == "backbone":
        params["num_classes"] = 10
    model = registry.create(cfg.model.kind, cfg.model.name, **params)
    assert model.stage_channels["stage4"] == 128  # ResNet-18 at width 0.25, for every variant
