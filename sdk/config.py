"""YAML recipes read with ``yaml.safe_load`` into typed, validated dataclasses.

Every problem is a ``ConfigError`` naming the file and the key path (``losses[1].weight``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ._checks import is_int, positive_int
from .errors import ConfigError

__all__ = [
    "load_yaml",
    "from_dict",
    "to_dict",
    "ModelConfig",
    "DataConfig",
    "LossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "load_train_config",
]

T = TypeVar("T")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` rules, bounded (size, depth, no anchors or aliases); a missing
    file, bytes that are not UTF-8 or bad YAML is a ``ConfigError``."""
    from ._yaml import load_bounded  # bounded: size, nesting depth, no anchors or aliases

    p = Path(path)
    data = load_bounded(p, ConfigError, what="config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _where(source: str, path: str) -> str:
    return f"{source}: {path or '<top level>'}"


def _convert(value: Any, tp: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_where(source, path)}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{_where(source, path)}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(source, path)}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{_where(source, path)}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, source, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, source, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, path)}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if args else Any
        out_d = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{_where(source, path)}: keys must be strings, got {k!r}")
            out_d[k] = _convert(v, vt, source, f"{path}.{k}" if path else k)
        return out_d
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source, path)}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if not is_int(value):
            raise ConfigError(f"{_where(source, path)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "5e-5" as a string; accept numeric strings for floats only
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{_where(source, path)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(source, path)}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{_where(source, path)}: unsupported field type {tp!r}")  # programming error, still typed


def from_dict(cls: type[T], data: Any, *, source: str = "<config>", path: str = "") -> T:
    """Validate ``data`` into dataclass ``cls``: unknown keys, wrong types and missing values are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source, path)}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{_where(source, key)}: unknown key; known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], source, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{_where(source, sub)}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{_where(source, path)}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@dataclasses.dataclass
class ModelConfig:
    """Which registered component to train: ``create(kind, name, **params)``."""

    name: str
    kind: Literal["backbone", "student"] = "backbone"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """An ImageFolder directory, its seeded validation subset and the image sizes."""

    root: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    image_size: int = 128
    resize: int | None = None  # shorter side before the center crop; default image_size / 0.875
    train_sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (from_epoch, size)
    scale_min: float = 0.35
    hflip: bool = True
    mixup: float = 0.0  # Beta(alpha, alpha) mixing weight of mixup; 0 = off
    cutmix: float = 0.0  # likewise for CutMix; with both on, each batch uses one of the two
    on_error: Literal["raise", "skip"] = "raise"
    limit_per_class: int | None = None
    workers: int | None = None  # threads that decode and augment batches ahead of the step; None = the CPU count
    prefetch: int = 4  # batches prepared ahead of the step
    augment: bool = True  # false: deterministic center crops at the training size (teacher outputs cacheable)

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction must be between 0 and 1")
        if self.image_size < 16:
            raise ConfigError("data.image_size must be at least 16")
        if not 0.0 < self.scale_min <= 1.0:
            raise ConfigError("data.scale_min must be in (0, 1]")
        if self.workers is not None and not 0 <= self.workers <= 64:
            raise ConfigError(f"data.workers must be between 0 (inline) and 64, got {self.workers}")
        if not 1 <= self.prefetch <= 64:
            raise ConfigError(f"data.prefetch must be between 1 and 64 batches, got {self.prefetch}")
        for key in ("mixup", "cutmix"):
            if not 0.0 <= getattr(self, key) <= 100.0:
                raise ConfigError(f"data.{key} must be a Beta distribution's alpha between 0 (off) and 100 "
                                  f"(typically 0.2-1.0), got {getattr(self, key)}")


@dataclasses.dataclass
class LossConfig:
    """One term of the objective: a registered ``loss`` and its weight."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    param_lr: dict[str, float] = dataclasses.field(default_factory=dict)  # module-name prefix -> lr


@dataclasses.dataclass
class ScheduleConfig:
    name: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    step_epochs: list[int] = dataclasses.field(default_factory=list)
    step_gamma: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    """One experiment: model, data, objective, optimizer, schedule, and optional teacher."""

    name: str
    model: ModelConfig
    losses: list[LossConfig]
    epochs: int
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    batch_size: int = 64
    seed: int = 0
    teacher: str | None = None  # checkpoint path
    init: str | None = None  # checkpoint to start from (e.g. stage 2 from stage 1)
    freeze: list[str] = dataclasses.field(default_factory=list)  # module-name prefixes kept frozen
    threads: int | None = None  # torch CPU threads per process; None = the CPU count / processes on this machine
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast; auto = bf16 where the hardware has it
    channels_last: bool = True
    teacher_cache: bool = False  # keep the teacher's outputs per image (needs data.augment: false)
    grad_clip: float | None = None
    log_every: int = 20

    def validate(self) -> None:
        positive_int(self.epochs, "epochs")
        positive_int(self.batch_size, "batch_size")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device[:40]!r}")
        if self.threads is not None:
            positive_int(self.threads, "threads")
        if self.teacher_cache:
            random_parts = [k for k, on in (("data.augment", self.data.augment), ("data.mixup", self.data.mixup > 0),
                                             ("data.cutmix", self.data.cutmix > 0)) if on]
            if random_parts:
                raise ConfigError(f"teacher_cache: the teacher's targets change with {', '.join(random_parts)}; "
                                  "cache them only with data.augment: false and no mixing")
        if not self.losses:
            raise ConfigError("losses must name at least one loss")


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training recipe."""
    return from_dict(TrainConfig, load_yaml(path), source=str(path))


# -- command-line overrides and the generated schema ------------------------------------------------------------------
def _override_path(key: str, source: str) -> list[str | int]:
    """``data.limit_per_class`` -> ['data', 'limit_per_class']; ``losses[1].weight`` or ``losses.1.weight`` ->
    ['losses', 1, 'weight']."""
    import re

    path: list[str | int] = []
    for part in key.split("."):
        m = re.match(r"^(?P<name>[^.\[\]]+)((?:\[\d+\])*)$", part)
        if not part or m is None:
            raise ConfigError(f"{source}: {key!r} is not a key path (use dots: data.limit_per_class, losses.0.weight)")
        name = m.group("name")
        path.append(int(name) if name.isdigit() else name)
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", part))
    return path


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], *,
                    source: str = "--set") -> dict[str, Any]:
    """A copy of the raw recipe ``data`` with each ``KEY=VALUE`` applied in order (``KEY`` a dotted path, list items by
    index; ``VALUE`` read as YAML: ``1``, ``0.5``, ``true``, ``null``, ``[a, b]``). Validation is left to
    ``from_dict``, so an override is checked exactly like the file; a malformed override is a ``ConfigError``."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE (e.g. --set epochs=1)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} {item!r}: the value is not valid YAML ({exc})") from exc
        path = _override_path(key, f"{source} {item!r}")
        node: Any = out
        for depth, step in enumerate(path):
            last = depth == len(path) - 1
            where = ".".join(str(p) for p in path[:depth + 1])
            if isinstance(step, int):
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    size = f"a list of {len(node)}" if isinstance(node, list) else type(node).__name__
                    raise ConfigError(f"{source} {item!r}: {where}: no item {step} ({size})")
                if last:
                    node[step] = value
                else:
                    node = node[step]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {item!r}: {where}: the value above is not a mapping")
            if last:
                node[step] = value
            else:
                if node.get(step) is None:
                    node[step] = {}
                node = node[step]
    return out


def load_train_config_with_overrides(path: str | Path, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """``load_train_config`` with ``KEY=VALUE`` overrides applied to the file's data before validation."""
    if not overrides:
        return load_train_config(path)
    data = apply_overrides(load_yaml(path), overrides)
    return from_dict(TrainConfig, data, source=f"{path} (with --set {' --set '.join(overrides)})")


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis) or "any"
        return f"list[{inner}]" if origin is list else f"[{inner}]"
    if origin is dict:
        return f"mapping[{', '.join(_type_text(a) for a in args)}]" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "int", float: "float", str: "str", bool: "bool", Any: "any"}.get(tp, getattr(tp, "__name__", str(tp)))


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the class source: the field's description."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out = {}
    for line in lines:
        m = re.match(r"^\s+(\w+):[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _default_text(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(see below)"
    else:
        return "required"
    return "null" if value is None else yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def schema_markdown(cls: type = None) -> str:  # type: ignore[assignment]
    """Every key of a recipe (``TrainConfig`` by default) as markdown tables: key, type, default, description,
    generated from the dataclasses themselves, so it cannot drift from what ``from_dict`` accepts."""
    root = TrainConfig if cls is None else cls
    sections: list[tuple[str, type]] = [("", root)]
    out: list[str] = []
    seen: set[type] = set()
    while sections:
        prefix, c = sections.pop(0)
        if c in seen:
            continue
        seen.add(c)
        hints = typing.get_type_hints(c)
        comments = _field_comments(c)
        doc = (c.__doc__ or "").strip().splitlines()
        title = f"`{prefix}`" if prefix else "top level"
        out += [f"### {title} ({c.__name__})", "", doc[0] if doc and not doc[0].startswith(c.__name__ + "(") else "",
                "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(c):
            tp = hints[f.name]
            key = f"{prefix}.{f.name}" if prefix else f.name
            nested = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
            if nested:
                sub = nested[0]
                sections.append((key + ("[]" if typing.get_origin(tp) is list else ""), sub))
            text = _type_text(tp) if not (nested and typing.get_origin(tp) is list) else f"list[{nested[0].__name__}]"
            out.append(f"| `{key}` | {text.replace('|', '&#124;')} | `{_default_text(f)}` | "
                       f"{comments.get(f.name, '').replace('|', '&#124;')} |")
        out.append("")
    return "\n".join(line for line in out).rstrip() + "\n"
