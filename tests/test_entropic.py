"""Entropic Student: bottleneck density and its one rounding rule, GDN, the split student's paths, tables and codec
round trip, a stage-1 step, checkpoints without the tail, teacher pinning, MACs, recipes and a two-stage run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the Entropic Student needs torch (pip install edgesplit[train])")

from safetensors import safe_open  # noqa: E402

from edgesplit import registry  # noqa: E402
from edgesplit.codec import CODEC_ID, FactorizedCodec  # noqa: E402
from edgesplit.errors import ConfigError, PluginError  # noqa: E402
from edgesplit.plugins.backbones.resnet import resnet18  # noqa: E402
from edgesplit.plugins.entropic import GDN, IGDN, EntropyBottleneck, SplitStudent, file_sha256  # noqa: E402
from edgesplit.preprocess import Preprocess  # noqa: E402
from edgesplit.train import load, read_metadata, train  # noqa: E402
from edgesplit.train.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from edgesplit.train.losses import Auxiliary, FeatureMSE, Rate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"class{i}" for i in range(10)]
SIZE = 64
SMALL = {"bottleneck_channels": 8, "encoder_channels": 16, "decoder_channels": 24}


def _save_teacher(path: Path, labels: list[str], seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = resnet18(num_classes=len(labels), width=0.125)
    with torch.no_grad():  # BatchNorm statistics from data, so eval-mode features are not degenerate
        model.train()(torch.randn(8, 3, SIZE, SIZE))
    save_checkpoint(model.eval(), path,
                    model_config={"kind": "backbone", "name": "resnet18",
                                  "params": {"num_classes": len(labels), "width": 0.125}},
                    labels=labels, preprocess=Preprocess.for_size(SIZE).to_dict())
    return path


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "t.safetensors", LABELS)


def _student(teacher_path: Path, **params: object) -> SplitStudent:
    torch.manual_seed(1)
    return registry.create("student", "entropic", teacher=str(teacher_path), **{**SMALL, **params})


def _x(n: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _fit_quantiles(bottleneck: EntropyBottleneck, steps: int = 150) -> None:
    """What the ``aux`` loss does over a training run, in a few cheap steps (only the quantiles move)."""
    opt = torch.optim.Adam([bottleneck.quantiles], lr=3.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        bottleneck.aux_loss().backward()
        opt.step()
        schedule.step()


# -- bottleneck ---------------------------------------------------------------------------------------------------
def test_rounding_is_one_rule_around_the_medians_ties_to_even() -> None:
    b = EntropyBottleneck(2).eval()
    with torch.no_grad():
        b.quantiles[:, 0, 1] = torch.tensor([0.0, 0.25])
    y = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49]).view(1, 1, 1, 6).repeat(1, 2, 1, 1)
    y[:, 1] += 0.25  # the same offsets from channel 1's median
    symbols = b.quantize_symbols(y)
    assert symbols.dtype == torch.int32
    expected = torch.tensor([0, 2, 2, 0, -2, 0], dtype=torch.int32)  # torch.round: half to even
    assert torch.equal(symbols[0, 0, 0], expected) and torch.equal(symbols[0, 1, 0], expected)
    y = torch.randn(3, 2, 5, 4) * 4
    y_hat, lik = b(y)
    assert torch.equal(y_hat, b.dequantize(b.quantize_symbols(y)))
    assert torch.equal(b(y, training=False)[0], y_hat)
    assert lik.shape == y.shape and bool((lik > 0).all()) and bool((lik <= 1).all())


def test_training_mode_adds_uniform_noise() -> None:
    b = EntropyBottleneck(3).train()
    y = torch.randn(2, 3, 8, 8)
    y_hat, _ = b(y)
    err = y_hat - y
    assert bool((err.abs() <= 0.5).all()) and err.abs().max() > 0.1
    assert not torch.equal(y_hat, torch.round(y_hat))
    assert torch.equal(b(y, training=False)[0], b.dequantize(b.quantize_symbols(y)))


def test_aux_loss_reaches_only_the_quantiles_and_likelihoods_sum_to_one() -> None:
    torch.manual_seed(0)
    b = EntropyBottleneck(3)
    b.aux_loss().backward()
    grads = {n: p.grad for n, p in b.named_parameters()}
    assert grads.pop("quantiles") is not None
    assert all(g is None for g in grads.values()), [n for n, g in grads.items() if g is not None]
    assert getattr(b.quantiles, "no_weight_decay", False)

    _fit_quantiles(b)
    assert float(b.aux_loss().detach()) < 0.1
    lo, k = b.support()
    assert (lo < 0).all() and k > 50
    symbols = torch.from_numpy(lo)[:, None] + torch.arange(k)[None, :]  # (C, K) integer grid per channel
    grid = b.dequantize(symbols.T.reshape(k, 3, 1, 1).to(torch.int32))
    with torch.no_grad():
        mass = b.eval().likelihood(grid).sum(0).flatten()
    torch.testing.assert_close(mass, torch.ones(3), atol=1e-3, rtol=0)
    pmf, _ = b._pmf_grid()
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-3)


def test_tables_are_deterministic_and_follow_the_quantiles() -> None:
    torch.manual_seed(0)
    b = EntropyBottleneck(4)
    _fit_quantiles(b, 50)
    t1, t2 = b.codec(), b.codec()
    assert isinstance(t1, FactorizedCodec) and t1.codec_id == CODEC_ID
    for key, value in t1.to_arrays().items():
        np.testing.assert_array_equal(value, t2.to_arrays()[key])
    clone = EntropyBottleneck(4)
    clone.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(clone.codec().to_arrays()["weights"], t1.to_arrays()["weights"])
    with pytest.warns(DeprecationWarning, match="use codec"):
        np.testing.assert_array_equal(b.tables().to_arrays()["weights"], t1.to_arrays()["weights"])
    q = b.quantiles.detach().double()[:, 0]
    np.testing.assert_array_equal(t1.to_arrays()["offsets"], np.floor((q[:, 0] - q[:, 1]).numpy()).astype(np.int64))
    assert t1.support == int((np.ceil((q[:, 2] - q[:, 1]).numpy()) - np.floor((q[:, 0] - q[:, 1]).numpy())).max()) + 1


def test_bottleneck_is_registered() -> None:
    b = registry.create("bottleneck", "factorized", channels=5)
    assert isinstance(b, EntropyBottleneck) and b.quantiles.shape == (5, 1, 3)
    with pytest.raises(ConfigError, match="tail_mass"):
        EntropyBottleneck(2, tail_mass=0.0)


def test_student_builds_its_bottleneck_by_registered_name(teacher_path: Path) -> None:
    default = _student(teacher_path)
    assert type(default.bottleneck) is EntropyBottleneck and default.bottleneck_name == "factorized"
    assert "bottleneck" not in default.recipe_params  # checkpoints of the default read as before

    class Coarse(EntropyBottleneck):
        pass

    with registry.isolated():
        @registry.register("bottleneck", "coarse-test")
        def coarse(channels: int) -> Coarse:
            return Coarse(channels, filters=(2,))

        s = _student(teacher_path, bottleneck="coarse-test")
        assert type(s.bottleneck) is Coarse and s.bottleneck.channels == SMALL["bottleneck_channels"]
        assert s.recipe_params["bottleneck"] == "coarse-test"
        with pytest.raises(PluginError, match="unknown bottleneck 'nope'.*factorized"):
            _student(teacher_path, bottleneck="nope")
    with pytest.raises(ConfigError, match="registered bottleneck"):
        _student(teacher_path, bottleneck=3)


# -- GDN ----------------------------------------------------------------------------------------------------------
def test_gdn_and_igdn_match_their_formulas_and_keep_bounded_gradients() -> None:
    torch.manual_seed(0)
    gdn, igdn = GDN(4), IGDN(4)
    with torch.no_grad():
        gdn.gamma.add_(torch.rand(4, 4) * 0.3)
    x = torch.randn(2, 4, 5, 5)
    beta, gamma = gdn.beta_reparam(gdn.beta), gdn.gamma_reparam(gdn.gamma)
    norm = beta.view(1, 4, 1, 1) + torch.einsum("ij,njhw->nihw", gamma, x * x)
    torch.testing.assert_close(gdn(x), x / torch.sqrt(norm))
    assert bool((beta >= 1e-6).all()) and bool((gamma >= 0).all())
    inorm = 1.0 + 0.1 * x * x  # IGDN's initial beta = 1, gamma = 0.1 I
    torch.testing.assert_close(igdn(x), x * torch.sqrt(inorm), rtol=1e-5, atol=1e-6)

    gdn.train()
    with torch.no_grad():
        gdn.beta.fill_(-1.0)  # below the bound: its value is clamped to beta_min
    gdn(x).abs().sum().backward()  # descent wants a larger beta: back into the range, so the gradient flows
    assert gdn.beta.grad is not None and bool((gdn.beta.grad < 0).all())
    gdn.beta.grad = None
    (-gdn(x).abs().sum()).backward()  # descent wants beta further below the bound: no gradient
    assert bool((gdn.beta.grad == 0).all())


# -- student ------------------------------------------------------------------------------------------------------
def test_student_shapes_and_outputs(teacher_path: Path) -> None:
    s = _student(teacher_path)
    x = _x()
    assert s.cut == "stage2" and s.latent_shape(SIZE, SIZE) == (8, 8, 8)
    assert set(s.stage_channels) == {"stage2", "stage3", "stage4"}
    out = s.train().forward_train(x, keep={"stage2", "stage3", "stage4", "bits", "aux"})
    assert out["logits"].shape == (2, 10)
    assert out["stage2"].shape == (2, s.stage_channels["stage2"], 8, 8)
    assert out["stage3"].shape == (2, s.stage_channels["stage3"], 4, 4)
    assert out["stage4"].shape == (2, s.stage_channels["stage4"], 2, 2)
    assert out["bits"].ndim == 0 and float(out["bits"].detach()) > 0 and out["aux"].ndim == 0
    assert not s.tail.training and not any(p.requires_grad for p in s.tail.parameters())
    with pytest.raises(ConfigError, match="no output"):
        s.forward_train(x, keep={"stage1"})
    assert s.recipe_params["teacher_sha256"] == file_sha256(teacher_path)
    assert s.recipe_params["num_classes"] == 10


def test_a_coarser_latent_is_upsampled_back_to_the_cut(teacher_path: Path, tmp_path: Path) -> None:
    s = _student(teacher_path, cut="stage1", latent_stride=8)
    x = _x()
    assert s.latent_shape(SIZE, SIZE) == (8, 8, 8)  # stride 8, while the cut (stage1) is at stride 4
    out = s.train().forward_train(x, keep={"stage1", "stage2"})
    assert out["stage1"].shape == (2, s.stage_channels["stage1"], 16, 16)
    assert out["stage2"].shape == (2, s.stage_channels["stage2"], 8, 8)
    assert s.recipe_params["latent_stride"] == 8
    path = tmp_path / "coarse.safetensors"
    save_checkpoint(s, path, model_config={"kind": "student", "name": "entropic", "params": s.recipe_params},
                    labels=LABELS, preprocess=Preprocess.for_size(SIZE).to_dict())
    again = load(path)
    with torch.no_grad():
        assert torch.equal(again(x), s.eval()(x))
    two_steps = _student(teacher_path, cut="stage1", latent_stride=16)  # two 2x steps, a ReLU between them
    assert two_steps.latent_shape(SIZE, SIZE) == (8, 4, 4)
    assert two_steps.train().forward_train(x, keep={"stage1"})["stage1"].shape == out["stage1"].shape
    for bad in (2, 12, 0):
        with pytest.raises(ConfigError, match="latent_stride"):
            _student(teacher_path, cut="stage1", latent_stride=bad)


def test_eval_forward_is_the_split_path(teacher_path: Path) -> None:
    s = _student(teacher_path)
    x = _x()
    symbols = s.encode_symbols(x)
    assert symbols.dtype == torch.int32 and symbols.shape == (2, 8, 8, 8)
    with torch.no_grad():
        split = s.decode_symbols(symbols)
        assert torch.equal(s.eval()(x), split)
        assert torch.equal(s.train()(x), split)  # forward rounds in every mode
        # stage 2: the engine freezes the bottleneck by putting it in eval mode -> hard rounding in forward_train
        s.train()
        s.bottleneck.eval()
        assert torch.equal(s.forward_train(x)["logits"], split)


def test_codec_round_trip_gives_the_same_logits(teacher_path: Path) -> None:
    s = _student(teacher_path).eval()
    _fit_quantiles(s.bottleneck, 100)
    x = _x(3)
    with torch.no_grad():
        symbols = s.encode_symbols(x)
        want = s(x)
    codec = s.codec()
    with torch.no_grad():  # the rate the training loss sees is what the coder spends
        bits = -torch.log2(s.bottleneck.likelihood(s.bottleneck.dequantize(symbols))).sum(dim=(1, 2, 3))
    decoded = []
    for i in range(3):
        payload = codec.encode(symbols[i].numpy())
        info = codec.information_bits(symbols[i].numpy())
        assert abs(info - float(bits[i])) < 1e-3 * info
        assert 8 * len(payload) <= 1.01 * info + 64
        decoded.append(codec.decode(payload, tuple(symbols.shape[1:])))
    got = torch.from_numpy(np.stack(decoded))
    assert torch.equal(got, symbols)
    with torch.no_grad():
        assert torch.equal(s.decode_symbols(got), want)


def test_stage1_objective_decreases(teacher_path: Path) -> None:
    s = _student(teacher_path).train()
    teacher = load(teacher_path)
    stages = ["stage2", "stage3", "stage4"]
    losses = [FeatureMSE(stages, s, teacher, stage_weights=[1.0, 0.5, 0.25]), Rate(), Auxiliary()]
    weights = [1.0, 1e-3, 1.0]
    keys = set().union(*(l.student_keys for l in losses))
    x, y = _x(4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        _, t_out = teacher.forward_stages(x, keep=stages)

    def terms() -> list[torch.Tensor]:
        torch.manual_seed(5)  # the same noise each time: compare like with like
        out = s.forward_train(x, keep=keys)
        return [w * l(out, t_out, y) for w, l in zip(weights, losses)]

    opt = torch.optim.Adam([p for p in s.parameters() if p.requires_grad], lr=1e-2)
    before = [float(t.detach()) for t in terms()]
    for _ in range(8):
        opt.zero_grad()
        sum(terms()).backward()
        opt.step()
    after = [float(t.detach()) for t in terms()]
    assert after[0] + after[1] < 0.9 * (before[0] + before[1]), (before, after)  # distortion + rate
    assert after[2] < before[2]  # the quantiles move towards their targets


def test_checkpoint_round_trip_without_the_tail(teacher_path: Path, tmp_path: Path) -> None:
    s = _student(teacher_path)
    with torch.no_grad():
        for p in s.decoder.parameters():
            p.add_(0.01)  # not the init a rebuilt model would have anyway
    path = tmp_path / "student.safetensors"
    save_checkpoint(s, path, model_config={"kind": "student", "name": "entropic", "params": s.recipe_params},
                    labels=LABELS, preprocess=Preprocess.for_size(SIZE).to_dict())
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith("tail.")]
    assert {k.split(".")[0] for k in keys} == {"encoder", "bottleneck", "decoder"}
    assert read_metadata(path)["model"]["params"]["teacher_sha256"] == file_sha256(teacher_path)
    again = load(path)
    assert isinstance(again, SplitStudent)
    x = _x()
    with torch.no_grad():
        assert torch.equal(again(x), s.eval()(x))
    assert torch.equal(again.encode_symbols(x), s.encode_symbols(x))
    np.testing.assert_array_equal(again.codec().to_arrays()["weights"], s.codec().to_arrays()["weights"])

    state = s.checkpoint_state_dict()
    with pytest.raises(CheckpointError, match="missing"):
        again.load_checkpoint_state_dict({k: v for k, v in state.items() if not k.startswith("decoder.conv0")})
    with pytest.raises(CheckpointError, match="unexpected"):
        again.load_checkpoint_state_dict({**state, **{f"tail.{k}": v for k, v in s.tail.state_dict().items()}})
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(s.decoder, bad, model_config={"kind": "student", "name": "entropic", "params": s.recipe_params},
                    labels=LABELS, preprocess=Preprocess.for_size(SIZE).to_dict())
    with pytest.raises(CheckpointError, match="do not fit"):
        load(bad)


def test_teacher_hash_is_checked(teacher_path: Path) -> None:
    digest = file_sha256(teacher_path)
    assert _student(teacher_path, teacher_sha256=digest.upper()).recipe_params["teacher_sha256"] == digest
    with pytest.raises(ConfigError) as info:
        _student(teacher_path, teacher_sha256="0" * 64)
    assert str(teacher_path) in str(info.value) and digest in str(info.value) and "0" * 64 in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        _student(teacher_path.with_name("missing.safetensors"))
    with pytest.raises(ConfigError, match="10 classes"):
        _student(teacher_path, num_classes=3)
    with pytest.raises(ConfigError, match="not a stage"):
        _student(teacher_path, cut="head")
    with pytest.raises(ConfigError, match=r"tune_tail: \['stage1'\] are not stages after the cut"):
        _student(teacher_path, tune_tail=["stage1"])
    with pytest.raises(ConfigError, match="list of stage names"):
        _student(teacher_path, tune_tail="stage3")


def test_device_side_costs_at_most_a_tenth_of_the_teacher() -> None:
    torch.manual_seed(0)
    s = SplitStudent(resnet18(num_classes=10))  # the default recipe on the real teacher architecture
    report = s.macs_report(128)
    assert report["latent_shape"] == [24, 16, 16]
    assert report["device_macs"] <= 0.10 * report["teacher_macs"], report
    assert 0.5e9 < report["teacher_macs"] < 0.7e9 and report["teacher_params"] > 11e6
    assert report["device_params"] < 0.2e6 and report["server_macs"] < report["teacher_macs"]
    assert not s.tail.training  # reporting leaves every module's mode alone


def test_committed_layout_costs_at_most_a_tenth_of_the_teacher(tmp_path: Path) -> None:
    params = _entropic_plan(tmp_path).runs[0].config.model.params
    layout = {k: v for k, v in params.items() if k not in ("teacher", "tune_tail")}
    torch.manual_seed(0)
    s = SplitStudent(resnet18(num_classes=10, width=0.5), **layout)  # the committed teacher's architecture
    report = s.macs_report(128)
    assert report["latent_shape"] == [24, 16, 16]
    assert report["device_macs"] <= 0.10 * report["teacher_macs"], report


class _Path(torch.nn.Module):
    """One of the student's paths (encode_symbols or decode_symbols) as a module torch.onnx can export."""

    def __init__(self, student: SplitStudent, path) -> None:
        super().__init__()
        self.student, self.path = student, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x)


@pytest.mark.parametrize("params", [{}, {"cut": "stage1", "latent_stride": 8}], ids=["at-cut", "upsampled"])
def test_split_graphs_export_to_onnx(teacher_path: Path, tmp_path: Path, params: dict) -> None:
    onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx and onnxscript (pip install edgesplit[export])")
    pytest.importorskip("onnxscript", reason="the torch.onnx dynamo exporter needs onnxscript")
    ort = pytest.importorskip("onnxruntime", reason="parity check needs onnxruntime")
    s = _student(teacher_path, **params).eval()
    x = _x()
    with torch.no_grad():
        symbols, logits = s.encode_symbols(x), s(x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    for name, graph, arg, want in (("device", _Path(s, s.encode_symbols).eval(), x, symbols),
                                   ("server", _Path(s, s.decode_symbols).eval(), symbols, logits)):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(graph, (arg,), str(path), dynamo=True, opset_version=18)
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: arg.numpy()})
        if name == "device":
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, want.numpy())
        else:
            torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


# -- recipes and the engine -----------------------------------------------------------------------------------------
def _entropic_plan(out: Path, betas: list[str] | None = None):
    from edgesplit.recipe import load_recipe, parse_sweep, plan_recipe

    sweep = parse_sweep([f"beta={','.join(betas)}"]) if betas else None
    return plan_recipe(load_recipe(REPO / "configs" / "entropic.yaml"), out, source="configs/entropic.yaml",
                       sweep=sweep)


def test_one_recipe_plans_a_shared_base_and_two_stages_per_beta(tmp_path: Path) -> None:
    betas = ["2.5e-4", "1.6e-4", "1e-4", "4e-5", "1.6e-5", "6.4e-6"]
    plan = _entropic_plan(tmp_path, betas)
    shared = [r for r in plan.runs if r.point is None]
    assert [r.stage for r in shared] == ["base", "base_long", "base_long2"]
    assert [r.config.init for r in shared] == [None, str(tmp_path / "base/model.safetensors"),
                                               str(tmp_path / "base_long/model.safetensors")]
    assert all(r.config.freeze == ["tail"] and [l.name for l in r.config.losses] == ["feature_mse", "rate", "aux"]
               for r in shared)
    assert shared[0].config.losses[0].params["stage_weights"] == [1.0, 1.0, 0.5, 0.25]
    assert len(plan.runs) == 3 + 2 * len(betas)
    for beta in betas:
        stage1, stage2 = [r for r in plan.runs if r.point == f"beta={beta}"]
        assert (stage1.stage, stage2.stage) == ("stage1", "stage2")
        assert stage1.config.init == str(tmp_path / "base_long2/model.safetensors")
        assert stage2.config.init == str(stage1.out / "model.safetensors")
        assert stage1.config.losses[1].name == "rate" and stage1.config.losses[1].weight == pytest.approx(float(beta))
        assert stage1.config.losses[0].params["stage_weights"] == [0.25, 1.0, 0.5, 0.25]
        # stage 2 adds only which tail stages it fine-tunes (the first two after the cut); the rest stays frozen
        assert stage2.config.model.params == {**stage1.config.model.params, "tune_tail": ["stage2", "stage3"]}
        assert stage2.config.freeze == ["encoder", "bottleneck"]
        assert [l.name for l in stage2.config.losses] == ["kd", "ce"]
        assert stage1.config.model.params["cut"] == "stage1" and stage1.config.model.params["latent_stride"] == 8
        assert stage1.config.teacher == stage1.config.model.params["teacher"]


def test_two_stage_training_run(image_folder: Path, tmp_path: Path) -> None:
    from edgesplit.config import TrainConfig, from_dict

    classes = ["apple", "banana", "cherry"]
    teacher = str(_save_teacher(tmp_path / "teacher.safetensors", classes))
    model = {"kind": "student", "name": "entropic", "params": {"teacher": teacher, **SMALL}}
    common = {"model": model, "teacher": teacher, "epochs": 1, "batch_size": 6, "threads": 1,
              "data": {"image_size": 32, "val_fraction": 0.25}}
    stage1 = from_dict(TrainConfig, {
        **common, "name": "s1", "freeze": ["tail"], "optimizer": {"name": "adam", "lr": 1e-3,
                                                                "param_lr": {"bottleneck.quantiles": 0.5}},
        "losses": [{"name": "feature_mse", "params": {"stages": ["stage2", "stage3"]}},
                   {"name": "rate", "weight": 1e-4}, {"name": "aux"}]})
    train(stage1, tmp_path / "s1", data_root=str(image_folder), progress=False)
    tuned = {**model, "params": {**model["params"], "tune_tail": ["stage3"]}}
    stage2 = from_dict(TrainConfig, {
        **common, "model": tuned, "name": "s2", "init": str(tmp_path / "s1" / "model.safetensors"),
        "freeze": ["encoder", "bottleneck"], "optimizer": {"name": "adam", "lr": 1e-3},
        "losses": [{"name": "kd"}, {"name": "ce"}]})
    train(stage2, tmp_path / "s2", data_root=str(image_folder), progress=False)

    first, second = load(tmp_path / "s1" / "model.safetensors"), load(tmp_path / "s2" / "model.safetensors")
    a, b = first.checkpoint_state_dict(), second.checkpoint_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("decoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert a["bottleneck.quantiles"].abs().max() > 10.0  # the quantiles' own lr moved them in 3 steps
    with safe_open(str(tmp_path / "s1" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("tail.")]
    with safe_open(str(tmp_path / "s2" / "model.safetensors"), framework="pt") as f:
        saved_tail = [k for k in f.keys() if k.startswith("tail.")]
    # stage 2 fine-tuned tail.stage3 (weights and BatchNorm statistics) and saved it; stage4 and the head are the
    # teacher's, bit for bit, and not in the file
    assert saved_tail and all(k.startswith("tail.stage3.") for k in saved_tail)
    t1, t2 = first.tail.state_dict(), second.tail.state_dict()
    assert any(not torch.equal(t1[k], t2[k]) for k in t1 if k.startswith("stage3.") and k.endswith("conv1.weight"))
    assert any(not torch.equal(t1[k], t2[k]) for k in t1 if k.startswith("stage3.") and k.endswith("running_mean"))
    assert all(torch.equal(t1[k], t2[k]) for k in t1 if not k.startswith("stage3."))
    for stage in ("s1", "s2"):  # the engine records the model's resolved recipe, teacher hash included
        params = read_metadata(tmp_path / stage / "model.safetensors")["model"]["params"]
        assert params["teacher_sha256"] == file_sha256(teacher) and params["bottleneck_channels"] == 8


@pytest.mark.parametrize("name", [n for n in registry.available("loss") if n in ("kd", "feature_mse", "nd")])
def test_a_distillation_loss_without_teacher_outputs_is_a_config_error(name: str, teacher_path: Path) -> None:
    s = _student(teacher_path)
    params = {"kd": {}, "feature_mse": {"stages": ["stage3"], "student": s, "teacher": s.tail},
              "nd": {"student": s, "teacher": s.tail, "num_classes": 10}}[name]
    loss = registry.create("loss", name, **params)
    out = s.forward_train(_x(), keep=loss.student_keys - {"logits"})
    with pytest.raises(ConfigError, match="reads the teacher's outputs .* there is no teacher"):
        loss(out, None, torch.zeros(2, dtype=torch.long))
