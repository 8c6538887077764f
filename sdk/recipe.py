"""Recipes with several stages and rate sweeps: one YAML file plans every run of an experiment.

A recipe may list ``stages:``; each stage is a partial recipe merged over the top level (mappings merge key by key,
lists and scalars replace), validated as a full ``TrainConfig``, and starts from the previous stage's weights unless
it sets ``init`` itself. ``vars:`` names values that ``${name}`` strings refer to; ``--sweep beta=1e-4,4e-5`` plans
one run per value, and stages marked ``shared: true`` (a common base) are trained once for all points.

Run layout under ``--out``: ``<stage>/`` per stage; with a sweep, shared stages at ``<stage>/`` and the others at
``<var>=<value>/<stage>/``. A stage whose directory holds ``metrics.json`` is finished and is not trained again.
Torch-free: the engine runs the plan.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig, apply_overrides, from_dict, load_yaml
from .errors import ConfigError

__all__ = ["StageRun", "RecipePlan", "plan_recipe", "load_recipe", "parse_sweep", "is_staged"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STAGE_ONLY = {"name", "shared"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass
class StageRun:
    """One training run of a plan: its config, its directory, and the checkpoint it starts from."""

    stage: str
    point: str | None  # the sweep point ("beta=1e-4"), None for shared stages and plain recipes
    config: TrainConfig
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").is_file() and (self.out / "model.safetensors").is_file()


@dataclass
class RecipePlan:
    runs: list[StageRun] = field(default_factory=list)
    points: list[str] = field(default_factory=list)


def is_staged(data: dict[str, Any]) -> bool:
    return "stages" in data or "vars" in data


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw recipe with ``--set`` overrides applied (validation happens when it is planned)."""
    return apply_overrides(load_yaml(path), list(overrides), source="--set")


def parse_sweep(items: list[str] | tuple[str, ...]) -> dict[str, list[Any]]:
    """``["beta=1e-4,4e-5"]`` -> ``{"beta": [("1e-4", 1e-4), ("4e-5", 4e-5)]}``: each value as written (it names
    the point's directory) and as read (a YAML scalar; a float-looking string becomes a float)."""
    import yaml

    out: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not _VAR.fullmatch("${" + name + "}") or not values.strip():
            raise ConfigError(f"--sweep {item[:80]!r}: expected NAME=V1,V2,... (e.g. --sweep beta=1e-4,4e-5)")
        if name in out:
            raise ConfigError(f"--sweep {name}: given twice; list every value in one --sweep")
        parsed = []
        for text in values.split(","):
            text = text.strip()
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"--sweep {name}: {text[:40]!r} is not a value ({exc})") from exc
            if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            parsed.append((text, value))
        out[name] = parsed
    if len(out) > 1:
        raise ConfigError(f"--sweep: one variable at a time (got {', '.join(out)})")
    return out


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _substitute(value: Any, variables: dict[str, Any], source: str, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, source, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def lookup(name: str) -> Any:
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none"
                raise ConfigError(f"{source}: {path}: ${{{name}}} is not in vars (known: {known})")
            return variables[name]

        whole = _VAR.fullmatch(value)
        if whole:
            return lookup(whole.group(1))  # keeps the variable's type (a float stays a float)
        return _VAR.sub(lambda m: str(lookup(m.group(1))), value)
    return value


def _mentions(value: Any, name: str) -> bool:
    """Whether ``${name}`` appears anywhere in a recipe value."""
    if isinstance(value, dict):
        return any(_mentions(v, name) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, name) for v in value)
    return isinstance(value, str) and any(m.group(1) == name for m in _VAR.finditer(value))


def _point_name(var: str, value: Any) -> str:
    text = f"{var}={value}"
    if not _NAME.match(text.replace("=", "_")):
        raise ConfigError(f"--sweep {var}: value {str(value)[:40]!r} cannot name a run directory")
    return text


def plan_recipe(data: dict[str, Any], out: str | Path, *, source: str = "<recipe>",
                sweep: dict[str, list[Any]] | None = None) -> RecipePlan:
    """Every run of a recipe, validated before anything trains."""
    out = Path(out)
    sweep = sweep or {}
    data = dict(data)
    variables = data.pop("vars", {}) or {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) for k in variables):
        raise ConfigError(f"{source}: vars: expected a mapping of names to values")
    for name in sweep:
        if name not in variables:
            raise ConfigError(f"{source}: --sweep {name}: the recipe has no vars.{name} to sweep "
                              f"(vars: {', '.join(sorted(variables)) or 'none'})")
    stages = data.pop("stages", None)
    staged = stages is not None
    if not staged:
        stages = [{"name": None}]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{source}: stages: expected a non-empty list of stage mappings")
    names: list[str] = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ConfigError(f"{source}: stages[{i}]: expected a mapping with a name, got {type(st).__name__}")
        if not staged:
            continue
        name = st.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{source}: stages[{i}].name: a name of letters, digits, '_', '.', '-' is required")
        if name in names:
            raise ConfigError(f"{source}: stages[{i}].name: {name!r} is used twice")
        if not isinstance(st.get("shared", False), bool):
            raise ConfigError(f"{source}: stages[{i}].shared: expected true or false")
        names.append(name)
    shared_flags = [bool(st.get("shared", False)) for st in stages]
    if any(shared_flags[i] and not shared_flags[i - 1] for i in range(1, len(stages))):
        raise ConfigError(f"{source}: stages: shared stages must come first (a shared stage cannot start from a "
                          "per-point one)")
    var, values = next(iter(sweep.items())) if sweep else (None, [None])
    values = [v if isinstance(v, tuple) else (str(v), v) for v in values]
    plan = RecipePlan(points=[_point_name(var, t) for t, _ in values] if var else [])
    shared_done: dict[str, StageRun] = {}
    for text, value in values:
        env = dict(variables)
        point = None
        if var is not None:
            env[var] = value
            point = _point_name(var, text)
        previous: StageRun | None = None
        for i, st in enumerate(stages):
            name = st.get("name")
            shared = shared_flags[i]
            if shared and name in shared_done:
                previous = shared_done[name]
                continue
            where = f"{source}: stages[{i}] ({name})" if name else source
            body = {k: v for k, v in st.items() if k not in _STAGE_ONLY}
            merged = _merge(data, body)
            if shared and var is not None and _mentions(merged, var):  # trained once for every point
                raise ConfigError(f"{where}: a shared stage trains once for all --sweep {var} values, but its "
                                  f"settings use ${{{var}}}; set them without ${{{var}}} in this stage, or make the "
                                  "stage per-point (shared: false)")
            merged = _substitute(merged, env, where, "")
            base_name = merged.get("name", "run")
            merged["name"] = ".".join(p for p in (str(base_name), point if not shared else None, name) if p)
            if previous is not None and "init" not in body:
                merged["init"] = str(previous.out / "model.safetensors")
            cfg = from_dict(TrainConfig, merged, source=where)
            if name is None:
                run_dir = out if point is None else out / point
            else:
                run_dir = out / name if (shared or point is None) else out / point / name
            run = StageRun(stage=name or "", point=None if shared else point, config=cfg, out=run_dir)
            plan.runs.append(run)
            if shared:
                shared_done[name] = run
            previous = run
    return plan
