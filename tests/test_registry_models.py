"""Every registered student, loss and bottleneck, read from the registry: builds, runs forward and backward on a tiny
input, and gives gradients. A new registration is tested here with no new test code (tiny sizes only)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="students and losses need torch (pip install edgesplit[train])")

from edgesplit import registry  # noqa: E402
from edgesplit.train.engine import model_outputs  # noqa: E402

from .cli_fixtures import save_teacher  # noqa: E402

NUM_CLASSES, SIZE, BATCH = 3, 32, 4

# The kinds that hold trainable students: `student`, and any kind the registry names for full or split students.
STUDENT_KINDS = [k for k in registry.KINDS if "student" in k]
STUDENTS = [(kind, name) for kind in STUDENT_KINDS for name in registry.available(kind)]
LOSSES = registry.available("loss")
# binary sign estimators: a registry kind where there is one, else the names the binary student documents
ESTIMATORS = registry.available("estimator") if "estimator" in registry.KINDS else ["ste", "reste", "biper"]

# Tiny parameters for the first-party students; a student not listed is built with its defaults plus whatever of
# ``num_classes``/``teacher`` its factory accepts.
_TINY: dict[str, dict[str, Any]] = {
    "entropic": {"bottleneck_channels": 4, "encoder_channels": 8, "decoder_channels": 8},
    "binary": {"width": 0.125, "layers": [1, 1, 1, 1]},
    "qat": {"backbone": "resnet18", "backbone_params": {"width": 0.125}},
}
# Parameters a loss cannot default: the stages to distill from.
_LOSS_PARAMS: dict[str, dict[str, Any]] = {"feature_mse": {"stages": ["stage3", "stage4"]}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


def _build_student(kind: str, name: str, teacher: Path) -> torch.nn.Module:
    factory = registry.get(kind, name)
    accepted = inspect.signature(factory).parameters
    params = dict(_TINY.get(name, {}))
    if "num_classes" in accepted:
        params.setdefault("num_classes", NUM_CLASSES)
    if "teacher" in accepted:
        params["teacher"] = str(teacher)
    required = [p for p, v in accepted.items() if v.default is inspect.Parameter.empty
                and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p not in params]
    assert not required, f"{kind} {name!r} needs {required}: add tiny values to _TINY in {__file__}"
    torch.manual_seed(0)
    return registry.create(kind, name, **params)


def _input(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _trainable_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("kind,name", STUDENTS, ids=[f"{k}:{n}" for k, n in STUDENTS])
def test_student_forward_backward(kind: str, name: str, teacher_path: Path) -> None:
    model = _build_student(kind, name, teacher_path).train()
    x = _input()
    out = model_outputs(model, x)
    logits = out["logits"]
    assert logits.shape == (BATCH, NUM_CLASSES) and bool(torch.isfinite(logits).all())
    # different images give different logits: a student that ignores its input fails here
    assert not torch.allclose(logits[0], logits[1])
    y = torch.arange(BATCH) % NUM_CLASSES
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = _trainable_grads(model)
    assert grads, f"{name}: no trainable parameter received a gradient"
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for g in grads.values()), f"{name}: every gradient is zero"
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (BATCH, NUM_CLASSES)


@pytest.mark.parametrize("kind,name", STUDENTS, ids=[f"{k}:{n}" for k, n in STUDENTS])
def test_student_steps_lower_the_loss(kind: str, name: str, teacher_path: Path) -> None:
    """A few optimizer steps on one fixed batch lower its loss: the parameters the gradient reaches do matter."""
    model = _build_student(kind, name, teacher_path).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01)
    x, y = _input(), torch.arange(BATCH) % NUM_CLASSES

    def loss_now() -> float:
        torch.manual_seed(3)  # the same training-mode noise (a bottleneck's) for both measurements
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model_outputs(model, x)["logits"], y))

    before = loss_now()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model_outputs(model, x)["logits"], y).backward()
        opt.step()
    assert loss_now() < before


def _loss_setup(name: str, teacher_path: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from edgesplit.train import load

    teacher = load(teacher_path).eval()
    student = _build_student("student", "entropic", teacher_path) if "entropic" in registry.available("student") \
        else None
    if student is None:
        pytest.skip("the losses are exercised on the split student 'entropic', which is not available")
    factory = registry.get("loss", name)
    accepted = inspect.signature(factory).parameters
    params = dict(_LOSS_PARAMS.get(name, {}))
    if "student" in accepted:
        params["student"] = student
    if "teacher" in accepted:
        params["teacher"] = teacher
    if "num_classes" in accepted:
        params["num_classes"] = NUM_CLASSES
    return student.train(), teacher, registry.create("loss", name, **params)


def _loss_value(loss: torch.nn.Module, student: torch.nn.Module, teacher: torch.nn.Module,
                x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s_out = model_outputs(student, x, loss.student_keys)
    with torch.no_grad():
        t_out = model_outputs(teacher, x, loss.teacher_keys) if loss.teacher_keys else None
    return loss(s_out, t_out, y)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_is_a_finite_scalar_with_gradient(name: str, teacher_path: Path) -> None:
    student, teacher, loss = _loss_setup(name, teacher_path)
    x, y = _input(), torch.arange(BATCH) % NUM_CLASSES
    value = _loss_value(loss, student, teacher, x, y)
    assert value.dim() == 0 and math.isfinite(value.item())
    value.backward()
    grads = _trainable_grads(student) | {f"loss.{k}": v for k, v in _trainable_grads(loss).items()}
    assert grads and any(float(g.abs().sum()) > 0 for g in grads.values()), f"{name}: no gradient reaches the student"


@pytest.mark.parametrize("name", LOSSES)
def test_loss_steps_lower_it(name: str, teacher_path: Path) -> None:
    """Minimizing the loss alone for a few steps on one batch lowers it (a no-op or wrong-sign loss fails)."""
    student, teacher, loss = _loss_setup(name, teacher_path)
    x, y = _input(), torch.arange(BATCH) % NUM_CLASSES
    params = [p for p in list(student.parameters()) + list(loss.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01)
    torch.manual_seed(3)  # the bottleneck's training noise
    first = _loss_value(loss, student, teacher, x, y).item()
    for _ in range(8):
        opt.zero_grad()
        _loss_value(loss, student, teacher, x, y).backward()
        opt.step()
    torch.manual_seed(3)
    assert _loss_value(loss, student, teacher, x, y).item() < first


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_binary_student_with_each_estimator_trains(estimator: str) -> None:
    if "binary" not in registry.available("student"):
        pytest.skip("the binary student is not available")
    extra: dict[str, Any] = {"scale": "learnable"} if estimator == "biper" else {}
    torch.manual_seed(0)
    model = registry.create("student", "binary", num_classes=NUM_CLASSES, estimator=estimator,
                            **_TINY["binary"], **extra).train()
    x = _input()
    torch.nn.functional.cross_entropy(model(x), torch.arange(BATCH) % NUM_CLASSES).backward()
    grads = _trainable_grads(model)
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for g in grads.values())


def test_the_registry_lists_what_these_tests_cover() -> None:
    """Guards the parametrization itself: an empty registry would make every test above vanish silently."""
    assert {"ce", "kd"} <= set(LOSSES)
    assert any(name == "entropic" for _, name in STUDENTS)


BOTTLENECKS = registry.available("bottleneck")


@pytest.mark.parametrize("name", BOTTLENECKS)
def test_bottleneck_trains_and_its_tables_code_its_symbols(name: str) -> None:
    torch.manual_seed(0)
    channels = 4
    bottleneck = registry.create("bottleneck", name, channels=channels).train()
    y = torch.randn(2, channels, 5, 6, requires_grad=True) * 3
    y_hat, likelihoods = bottleneck(y)
    assert y_hat.shape == y.shape and likelihoods.shape == y.shape
    assert bool(((likelihoods > 0) & (likelihoods <= 1)).all())
    (-torch.log2(likelihoods).sum() + bottleneck.aux_loss()).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in bottleneck.parameters())
    bottleneck.eval()
    with torch.no_grad():
        symbols = bottleneck.quantize_symbols(y)
        assert symbols.dtype == torch.int32
        assert float((bottleneck.dequantize(symbols) - y).abs().max()) <= 0.5 + 1e-5  # rounding, nothing more
        codec = bottleneck.codec()
    for image in symbols.numpy():
        payload = codec.encode(image)
        assert 0 < len(payload) < image.size * 4  # coded, and smaller than the raw int32 symbols
        np.testing.assert_array_equal(codec.decode(payload, image.shape), image)
