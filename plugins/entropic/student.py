"""The Entropic Student: a small device-side encoder and entropy bottleneck replace a teacher's layers up to a cut;
a server-side decoder rebuilds the teacher's features there and the teacher's own later stages (the tail) finish.

Matsubara, Yang, Levorato, Mandt, "Supervised Compression for Resource-Constrained Edge Computing Systems"
(WACV 2022, arXiv:2108.11898).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from edgesplit._checks import positive_int
from edgesplit.bundle import sha256_file
from edgesplit.checkpoint import load
from edgesplit.codec import FactorizedCodec
from edgesplit.errors import CheckpointError, ConfigError
from edgesplit.interfaces import Teacher
from edgesplit.plugins.backbones import count_macs
from edgesplit.registry import create, register

from .gdn import GDN, IGDN

__all__ = ["SplitStudent", "entropic", "file_sha256", "DEFAULT_BOTTLENECK"]

DEFAULT_BOTTLENECK = "factorized"  # what checkpoints without a ``bottleneck`` param were trained with

_EXTRA_KEYS = frozenset({"logits", "bits", "aux"})


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the teacher checkpoint a student is distilled from (``edgesplit.bundle.sha256_file``)."""
    try:
        return sha256_file(Path(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the teacher checkpoint ({exc.strerror or exc}); "
                          "train the teacher first or fix params.teacher") from exc


def _encoder_strides(stride: int, layers: int, cut: str) -> list[int]:
    """Per-conv strides whose product is ``stride``: the first conv takes up to 4x, later ones 2x, the rest 1x."""
    if stride < 1 or stride & (stride - 1):
        raise ConfigError(f"the latent's stride is {stride} (cut {cut!r}); the encoder needs a power of two")
    strides = [min(4, stride)]
    while stride // _prod(strides) > 1:
        strides.append(2)
    if len(strides) > layers:
        raise ConfigError(f"encoder_layers={layers} cannot reach the latent's stride {stride} (cut {cut!r}); "
                          f"use encoder_layers >= {len(strides)}")
    return strides + [1] * (layers - len(strides))


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2)


def _positive_int(name: str, value: Any) -> int:
    return positive_int(value, f"entropic student: {name}")


class SplitStudent(nn.Module):
    """Device: ``encoder`` (strided convs + GDN, down to the teacher's resolution at ``cut``) and ``bottleneck``
    (image -> int32 symbols). Server: ``bottleneck`` medians, ``decoder`` (convs + IGDN back to the teacher's
    channels at ``cut``) and ``tail`` (the teacher's stages after ``cut`` and its head; symbols -> logits).

    The tail is the teacher's: frozen here (``requires_grad=False``, kept in eval mode by :meth:`train`) and left
    out of :meth:`checkpoint_state_dict`, since the student's recipe rebuilds it from the teacher checkpoint, whose
    sha256 the recipe pins. The paper's second stage fine-tunes the decoder *and* the whole tail; here
    ``tune_tail`` names the tail stages that are trained (and then saved with the student; the others stay the
    teacher's). The committed recipes tune the first two stages after the cut, so a student checkpoint stays ~2 MB
    in fp16 instead of carrying a copy of the whole tail per beta.

    ``bottleneck`` names the registered ``bottleneck`` component built with ``channels=bottleneck_channels``
    (default ``factorized``); it must offer ``quantize_symbols``, ``dequantize``, ``codec`` and ``aux_loss``.

    ``latent_stride`` (default: the cut's stride) lets the symbols be coarser than the cut: the committed recipes
    cut after stage1 (stride 4, as the paper cuts ResNets after layer1, so the server keeps most of the teacher)
    but send a stride-8 latent, which the decoder upsamples back with nearest-neighbour 2x steps and 3x3 convs.

    The constructor takes ownership of ``teacher``: its stages up to ``cut`` are replaced by ``nn.Identity``.

    Training stages (see ``configs/entropic_*``): stage 1 trains encoder, bottleneck and decoder with feature MSE
    at the cut and later stages plus ``beta`` x rate (noisy bottleneck); stage 2 freezes encoder and bottleneck
    (the engine puts frozen modules in eval mode, so the bottleneck rounds around its medians exactly as deployed)
    and trains the decoder and the ``tune_tail`` stages with KD + CE on the final logits.
    """

    def __init__(self, teacher: nn.Module, cut: str = "stage2", bottleneck_channels: int = 24,
                 encoder_channels: int = 96, decoder_channels: int = 128, encoder_layers: int = 3,
                 tune_tail: Iterable[str] = (), latent_stride: int | None = None,
                 bottleneck: str = DEFAULT_BOTTLENECK) -> None:
        super().__init__()
        if not isinstance(teacher, nn.Module) or not isinstance(teacher, Teacher):
            raise ConfigError(f"the teacher must be a torch module with named stages (edgesplit.interfaces.Teacher: "
                              f"stage_names, stage_channels, stage_strides, forward_stages, ...), got "
                              f"{type(teacher).__name__}; wrap your own network with "
                              f"edgesplit.plugins.backbones.wrap_module")
        strides, channels = teacher.stage_strides, teacher.stage_channels
        cuttable = [s for s in teacher.stage_names if s in strides and s in channels and s != "head"]
        if cut not in cuttable:
            raise ConfigError(f"cut {cut!r} is not a stage of the teacher; choose one of {', '.join(cuttable)}")
        bottleneck_channels = _positive_int("bottleneck_channels", bottleneck_channels)
        encoder_channels = _positive_int("encoder_channels", encoder_channels)
        decoder_channels = _positive_int("decoder_channels", decoder_channels)
        encoder_layers = _positive_int("encoder_layers", encoder_layers)
        self.cut = cut
        cut_channels = int(channels[cut])

        cut_stride = int(strides[cut])
        latent_stride = cut_stride if latent_stride is None else _positive_int("latent_stride", latent_stride)
        upsample = latent_stride // cut_stride
        if latent_stride % cut_stride or upsample & (upsample - 1):
            raise ConfigError(f"latent_stride {latent_stride} must be the cut's stride ({cut_stride}) times a power "
                              f"of two: the decoder upsamples the latent by 2x steps back to the cut's resolution")
        self.latent_stride = latent_stride

        enc: OrderedDict[str, nn.Module] = OrderedDict()
        in_chs = 3
        layer_strides = _encoder_strides(latent_stride, encoder_layers, cut)
        for i, s in enumerate(layer_strides):
            last = i == len(layer_strides) - 1
            out_chs = bottleneck_channels if last else encoder_channels
            enc[f"conv{i}"] = _conv(in_chs, out_chs, 5 if s == 4 else 3, s)
            if not last:
                enc[f"gdn{i}"] = GDN(out_chs)
            in_chs = out_chs
        self.encoder = nn.Sequential(enc)
        if not isinstance(bottleneck, str) or not bottleneck:
            raise ConfigError(f"bottleneck must be the name of a registered bottleneck (e.g. {DEFAULT_BOTTLENECK!r}), "
                              f"got {bottleneck!r}")
        self.bottleneck = create("bottleneck", bottleneck, channels=bottleneck_channels)
        self.bottleneck_name = bottleneck
        dec: OrderedDict[str, nn.Module] = OrderedDict([
            ("conv0", _conv(bottleneck_channels, decoder_channels, 3)),
            ("igdn0", IGDN(decoder_channels)),
            ("conv1", _conv(decoder_channels, decoder_channels, 3)),
            ("igdn1", IGDN(decoder_channels)),
        ])
        # A latent coarser than the cut (fewer symbols per image) is brought back to the cut's resolution by
        # nearest-neighbour 2x steps, each followed by a 3x3 convolution that smooths the blocks.
        steps = upsample.bit_length() - 1
        for i in range(steps):
            dec[f"up{i}"] = nn.Upsample(scale_factor=2.0, mode="nearest")
            last = i == steps - 1
            dec[f"conv{2 + i}"] = _conv(decoder_channels, cut_channels if last else decoder_channels, 3)
            if not last:
                dec[f"relu{i}"] = nn.ReLU(inplace=True)
        if not steps:
            dec["conv2"] = _conv(decoder_channels, cut_channels, 1)
        self.decoder = nn.Sequential(dec)

        # The teacher's stages up to the cut are not part of the student; kept unregistered (not trained, not
        # saved) only to report the teacher's cost in macs_report.
        front = teacher.stages_between(None, cut)
        self._teacher_front: dict[str, nn.Module] = {name: teacher.stage(name) for name in front}
        for name in front:
            teacher.replace_stage(name, nn.Identity())
        self.tail = teacher
        self.tail.requires_grad_(False)
        self.tail.eval()
        self.tail_stages = [s for s in teacher.stages_between(cut, None) if s in channels]
        if isinstance(tune_tail, str):
            raise ConfigError(f"tune_tail must be a list of stage names, got the string {tune_tail!r}")
        self.tune_tail = [str(s) for s in tune_tail]
        tunable = teacher.stages_between(cut, None)
        bad = [s for s in self.tune_tail if s not in tunable]
        if bad:
            raise ConfigError(f"tune_tail: {bad} are not stages after the cut {cut!r}; choose from {', '.join(tunable)}")
        for name in self.tune_tail:
            self.tail.stage(name).requires_grad_(True)
        self.stage_channels = {cut: cut_channels, **{s: int(channels[s]) for s in self.tail_stages}}
        self.stage_strides = {cut: int(strides[cut]), **{s: int(strides[s]) for s in self.tail_stages}}
        self.recipe_params: dict[str, Any] = {}  # filled by the registered factory: what rebuilds this model

    # -- modes and weights ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SplitStudent:
        super().train(mode)
        self.tail.eval()  # the teacher's BatchNorm statistics are part of the (unsaved) tail: never update them
        for name in self.tune_tail:
            self.tail.stage(name).train(mode)
        return self

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder, bottleneck, decoder and ``tune_tail`` weights; the rest of the tail is rebuilt from the teacher
        checkpoint."""
        paths = {id(m): path for path, m in self.tail.named_modules()}
        tuned = tuple(f"tail.{paths[id(self.tail.stage(name))]}." for name in self.tune_tail)
        return {k: v for k, v in self.state_dict().items() if not k.startswith("tail.") or k.startswith(tuned)}

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`checkpoint_state_dict` output strictly (a missing or unexpected key is a CheckpointError)."""
        expected = set(self.checkpoint_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(f"student weights do not match: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                               f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                               " (tail weights come from the teacher checkpoint, except the recipe's tune_tail "
                               "stages)")
        self.load_state_dict(state, strict=False)

    # -- inference paths ---------------------------------------------------------------------------------------
    def encode_symbols(self, x: torch.Tensor) -> torch.Tensor:
        """Device path: image -> int32 symbols ``round(encoder(x) - median)``."""
        return self.bottleneck.quantize_symbols(self.encoder(x))

    def decode_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Server path: int32 symbols -> logits (``+ median`` inside)."""
        features = self.decoder(self.bottleneck.dequantize(symbols))
        return self.tail.forward_stages(features, after=self.cut)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits as deployed: device path then server path, hard rounding in every mode."""
        return self.decode_symbols(self.encode_symbols(x))

    def codec(self) -> FactorizedCodec:
        """The entropy codec of the symbols (see :meth:`EntropyBottleneck.codec`)."""
        return self.bottleneck.codec()

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the symbols for an input of ``height`` x ``width``."""
        with torch.no_grad():
            y = self.encoder(torch.zeros(1, 3, height, width))
        return tuple(int(d) for d in y.shape[1:])  # type: ignore[return-value]

    def forward_train(self, x: torch.Tensor, keep: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Training outputs: ``logits``, ``bits`` (the batch's total -log2 likelihood), ``aux`` (the bottleneck's
        quantile loss), the decoder's output under the cut's stage name, and any tail stages in ``keep``.

        The bottleneck adds noise in training mode and rounds otherwise (frozen in stage 2, or evaluation).
        """
        keep = set(keep)
        unknown = keep - set(self.stage_channels) - _EXTRA_KEYS
        if unknown:
            raise ConfigError(f"entropic student has no output {sorted(unknown)}; it offers "
                              f"{', '.join(sorted(set(self.stage_channels) | _EXTRA_KEYS))}")
        y_hat, likelihoods = self.bottleneck(self.encoder(x))
        features = self.decoder(y_hat)
        logits, kept = self.tail.forward_stages(features, after=self.cut, keep=keep)
        return {"logits": logits, self.cut: features, **kept,
                "bits": -torch.log2(likelihoods).sum(), "aux": self.bottleneck.aux_loss()}

    # -- cost ----------------------------------------------------------------------------------------------------
    def macs_report(self, input_size: int = 128) -> dict[str, Any]:
        """Multiply-accumulates (per image, GDN's normalization included) and parameters of the device side, the
        server side and the whole teacher, at ``input_size`` x ``input_size``."""
        modes = [(m, m.training) for m in self.modules()]
        x = torch.zeros(1, 3, input_size, input_size)
        try:
            with torch.no_grad():
                symbols = self.encode_symbols(x)
            teacher = _TeacherView(self._teacher_front, self.tail)
            device_macs = _macs(_Call(self, self.encode_symbols), x)
            server_macs = _macs(_Call(self, self.decode_symbols), symbols)
            teacher_macs = _macs(teacher, x)
        finally:
            for m, was in modes:
                m.training = was
        medians = self.bottleneck.channels
        device_params = _params(self.encoder) + medians
        server_params = _params(self.decoder) + _params(self.tail) + medians
        teacher_params = _params(teacher)
        return {
            "input_size": input_size,
            "latent_shape": list(symbols.shape[1:]),
            "device_macs": device_macs,
            "device_params": device_params,
            "server_macs": server_macs,
            "server_params": server_params,
            "teacher_macs": teacher_macs,
            "teacher_params": teacher_params,
            "device_macs_fraction": device_macs / teacher_macs,
        }


class _Call(nn.Module):
    """One of the student's paths as a module over the student's layers, so ``count_macs`` hooks see them."""

    def __init__(self, student: SplitStudent, path: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.student = student
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x)


class _TeacherView(nn.Module):
    """The whole teacher again (its front stages plus the tail), for counting its cost."""

    def __init__(self, front: dict[str, nn.Module], tail: nn.Module) -> None:
        super().__init__()
        self.front = nn.ModuleList(front.values())  # a list: stage names may be dotted submodule paths
        self.tail = tail
        self.after = list(front)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.front:
            x = m(x)
        return self.tail.forward_stages(x, after=self.after)[0]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    """``count_macs`` plus the 1x1 convolutions inside GDN/IGDN, which it does not see."""
    extra = 0

    def gdn_hook(mod: GDN, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal extra
        extra += int(out[0].numel()) * mod.channels

    handles = [m.register_forward_hook(gdn_hook) for m in module.modules() if isinstance(m, GDN)]
    try:
        return count_macs(module, x) + extra
    finally:
        for h in handles:
            h.remove()


@register("student", "entropic")
def entropic(teacher: str, cut: str = "stage2", bottleneck_channels: int = 24, encoder_channels: int = 96,
             decoder_channels: int = 128, encoder_layers: int = 3, num_classes: int | None = None,
             teacher_sha256: str | None = None, tune_tail: list[str] | None = None,
             latent_stride: int | None = None, bottleneck: str | None = None) -> SplitStudent:
    """Entropic Student over the teacher checkpoint at ``teacher``, split after stage ``cut``.

    ``teacher_sha256`` pins the exact teacher file (a mismatch is a ConfigError); the model's ``recipe_params``
    carry it, filled in, so a checkpoint's recipe rebuilds the same tail or fails loudly. ``tune_tail``: tail
    stages (after ``cut``) that stage 2 fine-tunes and the student checkpoint stores. ``latent_stride``: the
    symbols' stride (default: the cut's); a coarser latent is upsampled back to the cut's resolution by the decoder.
    ``bottleneck``: a registered bottleneck's name (default ``factorized``, what checkpoints without it used).
    """
    digest = file_sha256(teacher)
    if teacher_sha256 is not None and teacher_sha256.lower() != digest:
        raise ConfigError(f"{teacher}: teacher checkpoint has sha256 {digest}, but the student recipe expects "
                          f"{teacher_sha256}; use the teacher this student was trained with, or retrain the student")
    model = load(teacher)
    if not isinstance(model, Teacher):
        raise ConfigError(f"{teacher}: the teacher must be a backbone checkpoint (a model with named stages), got "
                          f"{type(model).__name__}")
    classes = model.num_classes
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ConfigError(f"{teacher}: the teacher predicts {classes} classes, params.num_classes is {num_classes}")
    student = SplitStudent(model, cut=cut, bottleneck_channels=bottleneck_channels,
                           encoder_channels=encoder_channels, decoder_channels=decoder_channels,
                           encoder_layers=encoder_layers, tune_tail=tune_tail or (), latent_stride=latent_stride,
                           bottleneck=DEFAULT_BOTTLENECK if bottleneck is None else bottleneck)
    student.recipe_params = {
        "teacher": str(teacher), "cut": cut, "bottleneck_channels": bottleneck_channels,
        "encoder_channels": encoder_channels, "decoder_channels": decoder_channels,
        "encoder_layers": encoder_layers, "num_classes": classes if num_classes is None else num_classes,
        "teacher_sha256": digest,
    }
    if tune_tail:
        student.recipe_params["tune_tail"] = list(tune_tail)
    if latent_stride is not None:
        student.recipe_params["latent_stride"] = latent_stride
    if bottleneck is not None:
        student.recipe_params["bottleneck"] = bottleneck
    return student
