"""``wrap_module``: any nn.Module with named stages becomes a teacher a split student can cut; foreign weights load
without pickle."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install edgesplit[train])")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edgesplit.errors import ConfigError  # noqa: E402
from edgesplit.interfaces import Teacher  # noqa: E402
from edgesplit.plugins.backbones import WrappedTeacher, load_weights, wrap_module  # noqa: E402
from edgesplit.plugins.entropic import SplitStudent  # noqa: E402

from .test_interfaces import check_teacher  # noqa: E402

SIZE = 64
SMALL = {"bottleneck_channels": 4, "encoder_channels": 8, "decoder_channels": 8}


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)) + self.proj(x))  # a residual inside the stage: fine


class Net(nn.Module):
    """A ResNet-like network in plain torch: stem at stride 4, three layers, pooled linear classifier."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = Block(8, 16, 2)
        self.layer3 = Block(16, 32, 2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.train()(torch.randn(4, 3, SIZE, SIZE))  # BatchNorm statistics that are not the init's
    return net.eval()


def _wrap(net: nn.Module | None = None, **kw: object) -> WrappedTeacher:
    return wrap_module(net if net is not None else _net(), stages=["layer1", "layer2", "layer3"], head="fc",
                       input_size=SIZE, **kw)


def test_stages_channels_and_strides_are_inferred() -> None:
    net = _net()
    teacher = _wrap(net)
    assert isinstance(teacher, Teacher)
    assert teacher.stage_names == ("stem", "layer1", "layer2", "layer3", "head")
    assert teacher.stage_channels == {"stem": 8, "layer1": 8, "layer2": 16, "layer3": 32}
    assert teacher.stage_strides == {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16}
    assert teacher.num_classes == 5
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(teacher.eval()(x), net(x))
    assert teacher.stage("layer2").layer2 is net.layer2  # the pieces share the module's layers
    check_teacher(_wrap())


def test_dotted_stage_paths_in_a_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    teacher = wrap_module(net, stages=["1", "3"], head="7", input_size=32)
    assert teacher.stage_channels == {"stem": 8, "1": 8, "3": 16} and teacher.stage_strides["3"] == 4
    check_teacher(teacher, size=32)


def test_a_split_student_cuts_a_wrapped_teacher_and_saves_only_what_it_tunes() -> None:
    teacher = _wrap()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = teacher.forward_stages(x, until="layer1")[0]
        reference = teacher.forward_stages(features, after="layer1")[0]
    torch.manual_seed(1)
    student = SplitStudent(teacher, cut="layer1", tune_tail=["layer2"], **SMALL).eval()
    with torch.no_grad():  # the tail is the teacher's, from the cut on
        torch.testing.assert_close(student.tail.forward_stages(features, after="layer1")[0], reference)
    out = student.train().forward_train(x, keep={"layer2", "layer3"})
    assert out["layer1"].shape == features.shape and out["layer3"].shape[1] == 32
    keys = set(student.checkpoint_state_dict())
    tail = {k for k in keys if k.startswith("tail.")}
    assert tail and all(k.startswith("tail.pieces.s2_layer2.") for k in tail)
    assert not any("conv1" in k for k in tail)
    assert student.macs_report(SIZE)["device_macs"] > 0
    with pytest.raises(ConfigError, match="not a stage of the teacher"):
        SplitStudent(_wrap(), cut="layer9", **SMALL)


def test_a_missing_stage_or_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no submodule 'layer4'.*children are: conv1, bn1, pool, layer1"):
        wrap_module(_net(), stages=["layer1", "layer4"], head="fc", input_size=SIZE)
    with pytest.raises(ConfigError, match="no submodule 'classifier'"):
        wrap_module(_net(), stages=["layer1"], head="classifier", input_size=SIZE)
    with pytest.raises(ConfigError, match="distinct"):
        wrap_module(_net(), stages=["layer1", "layer1"], head="fc", input_size=SIZE)
    with pytest.raises(ConfigError, match="contain one another"):
        wrap_module(_net(), stages=["layer1", "layer1.0"], head="fc", input_size=SIZE)
    with pytest.raises(ConfigError, match="order"):
        wrap_module(_net(), stages=["layer2", "layer1"], head="fc", input_size=SIZE)
    with pytest.raises(ConfigError, match="head 'conv1' does not run after the last stage 'layer3'"):
        wrap_module(_net(), stages=["layer1", "layer2", "layer3"], head="conv1", input_size=SIZE)


class Skip(Net):
    """layer1's output is added again after layer2: the network cannot be cut after layer2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        y = self.layer1(x)
        z = self.layer2(y) + F.avg_pool2d(y, 2).repeat(1, 2, 1, 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layer3(z), 1), 1))


class Branchy(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # data-dependent control flow: not traceable
            x = -x
        return super().forward(x)


def test_a_module_that_cannot_be_cut_there_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot be cut after stage 'layer2'.*skip connection"):
        wrap_module(Skip().eval(), stages=["layer1", "layer2", "layer3"], head="fc", input_size=SIZE)
    teacher = wrap_module(Skip().eval(), stages=["layer1", "layer3"], head="fc", input_size=SIZE)  # around it: fine
    assert list(teacher.stage_channels) == ["stem", "layer1", "layer3"]
    with pytest.raises(ConfigError, match="cannot be traced with torch.fx"):
        wrap_module(Branchy().eval(), stages=["layer1"], head="fc", input_size=SIZE)
    with pytest.raises(ConfigError, match=r"stage 'layer2' outputs \(1, 16, 3, 3\)"):  # 20 is no multiple of 8
        wrap_module(_net(), stages=["layer1", "layer2", "layer3"], head="fc", input_size=20)


def test_foreign_weights_load_from_safetensors_and_weights_only_torch_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    trained = _net(seed=3)
    st, pt, nested = tmp_path / "w.safetensors", tmp_path / "w.pt", tmp_path / "ckpt.pth"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(st))
    torch.save(trained.state_dict(), pt)
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3}, nested)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = trained(x)
        for path in (st, pt, nested):
            teacher = _wrap(Net(), weights=path).eval()
            torch.testing.assert_close(teacher(x), expected)

    pickled = tmp_path / "model.pt"
    torch.save(trained, pickled)  # a whole pickled module: code, not weights
    with pytest.raises(ConfigError, match="not a safetensors or weights-only torch file"):
        load_weights(Net(), pickled)
    with pytest.raises(ConfigError, match="do not fit Net"):
        load_weights(Net(classes=7), st)
    with pytest.raises(ConfigError, match="no such weights file"):
        load_weights(Net(), tmp_path / "absent.safetensors")


def test_a_wrapped_teacher_round_trips_through_its_state_dict() -> None:
    a, b = _wrap(_net(seed=1)).eval(), _wrap(_net(seed=2)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
