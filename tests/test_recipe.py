"""Multi-stage recipes and rate sweeps: the plan (merge, variables, init chaining, validation) and real tiny runs
through `edgesplit train`, with resume across stages and `edgesplit publish` of a staged run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgesplit.cli import main
from edgesplit.errors import ConfigError
from edgesplit.recipe import parse_sweep, plan_recipe

from .conftest import tiny_recipe

BASE = {
    **tiny_recipe(),
    "vars": {"w": 0.5},
    "stages": [
        {"name": "base", "shared": True},
        {"name": "tune", "losses": [{"name": "ce", "weight": "${w}"}], "optimizer": {"lr": 0.001}},
    ],
}


def test_plan_merges_substitutes_and_chains_init(tmp_path: Path) -> None:
    plan = plan_recipe(BASE, tmp_path, sweep=parse_sweep(["w=1e-4,0.25"]))
    assert [(r.stage, r.point) for r in plan.runs] == [("base", None), ("tune", "w=1e-4"), ("tune", "w=0.25")]
    base, t1, t2 = plan.runs
    assert base.out == tmp_path / "base" and t1.out == tmp_path / "w=1e-4" / "tune"
    assert t1.config.init == str(tmp_path / "base" / "model.safetensors") and base.config.init is None
    assert t1.config.losses[0].weight == pytest.approx(1e-4) and t2.config.losses[0].weight == 0.25
    assert t1.config.optimizer.lr == 0.001 and t1.config.optimizer.name == "adam"  # mappings merge key by key
    assert t1.config.name == "tiny.w=1e-4.tune"
    unswept = plan_recipe(BASE, tmp_path)
    assert unswept.runs[1].config.losses[0].weight == 0.5 and unswept.runs[1].out == tmp_path / "tune"


def test_shared_stages_run_once_and_each_point_chains_from_the_last(tmp_path: Path) -> None:
    recipe = {
        **tiny_recipe(name="r"),
        "vars": {"w": 0.5, "lr": 0.002},
        "stages": [
            {"name": "a", "shared": True},
            {"name": "b", "shared": True, "epochs": 2},
            {"name": "c", "optimizer": {"lr": "${lr}"}, "losses": [{"name": "kd"}, {"name": "ce", "weight": "${w}"}],
             "teacher": "t.safetensors"},
            {"name": "d", "init": "elsewhere.safetensors"},
        ],
    }
    plan = plan_recipe(recipe, tmp_path, sweep=parse_sweep(["w=1,2"]))
    assert [(r.stage, r.point) for r in plan.runs] == [("a", None), ("b", None), ("c", "w=1"), ("d", "w=1"),
                                                        ("c", "w=2"), ("d", "w=2")]
    a, b, c1, d1, c2, d2 = plan.runs
    assert b.config.init == str(a.out / "model.safetensors") and b.config.epochs == 2 and a.config.epochs == 1
    assert c1.config.init == c2.config.init == str(b.out / "model.safetensors")  # both points start from b
    assert d1.config.init == d2.config.init == "elsewhere.safetensors"  # a stage's own init is kept
    assert d1.config.epochs == 1  # stages merge over the top level, not over the stage before
    # a list in a stage replaces the top level's; a whole-string ${var} keeps its type, inside a string it is text
    assert [l.name for l in c1.config.losses] == ["kd", "ce"] and [l.name for l in d1.config.losses] == ["ce"]
    assert c1.config.losses[1].weight == 1 and c2.config.losses[1].weight == 2 and c1.config.optimizer.lr == 0.002
    assert c1.config.name == "r.w=1.c" and c2.config.name == "r.w=2.c" and a.config.name == "r.a"
    assert c2.out == tmp_path / "w=2" / "c" and plan.points == ["w=1", "w=2"]
    assert not any(r.done for r in plan.runs)
    a.out.mkdir(parents=True)
    (a.out / "metrics.json").write_text("{}")
    assert not a.done  # finished means metrics and weights both written
    (a.out / "model.safetensors").write_bytes(b"")
    assert a.done and not b.done


@pytest.mark.parametrize("where", ["top", "stage"])
def test_a_shared_stage_cannot_use_the_swept_variable(tmp_path: Path, where: str) -> None:
    shared = {"name": "base", "shared": True, **({"epochs": "${e}"} if where == "stage" else {})}
    recipe = {**tiny_recipe(name="r_${e}" if where == "top" else "r"), "vars": {"e": 1},
              "stages": [shared, {"name": "tune"}]}
    with pytest.raises(ConfigError, match=r"stages\[0\] \(base\): a shared stage trains once for all --sweep e"):
        plan_recipe(recipe, tmp_path, sweep=parse_sweep(["e=1,2"]))  # the first value equals the default: still refused
    assert len(plan_recipe(recipe, tmp_path).runs) == 2  # without a sweep there is one value, and nothing to refuse


def test_plain_recipe_with_a_sweep_and_values_as_written(tmp_path: Path) -> None:
    recipe = {**tiny_recipe(), "vars": {"w": 1.0}, "losses": [{"name": "ce", "weight": "${w}"}]}
    plan = plan_recipe(recipe, tmp_path, sweep=parse_sweep(["w=1e-4, 3"]))
    assert [r.out for r in plan.runs] == [tmp_path / "w=1e-4", tmp_path / "w=3"]
    assert [r.config.losses[0].weight for r in plan.runs] == [pytest.approx(1e-4), 3]
    assert [r.stage for r in plan.runs] == ["", ""] and plan.runs[0].config.init is None
    assert plan_recipe(tiny_recipe(), tmp_path).runs[0].out == tmp_path
    with pytest.raises(ConfigError, match="given twice"):
        parse_sweep(["w=1", "w=2"])
    with pytest.raises(ConfigError, match="one variable at a time"):
        parse_sweep(["w=1", "v=2"])
    with pytest.raises(ConfigError, match="cannot name a run directory"):
        plan_recipe(recipe, tmp_path, sweep=parse_sweep(["w=a/b"]))
    with pytest.raises(ConfigError, match="vars: expected a mapping"):
        plan_recipe({**recipe, "vars": [1]}, tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"stages": [{"name": "a"}, {"name": "a"}]}, "used twice"),
    ({"stages": [{"epochs": 1}]}, r"stages\[0\].name"),
    ({"stages": [{"name": "a"}, {"name": "b", "shared": True}]}, "shared stages must come first"),
    ({"stages": [{"name": "a", "epochs": "${nope}"}]}, r"\$\{nope\} is not in vars"),
    ({"stages": [{"name": "a", "epochs": 0}]}, r"stages\[0\] \(a\).*epochs must be a positive integer"),
    ({"stages": [{"name": "a", "bogus": 1}]}, "bogus: unknown key"),
    ({"stages": []}, "non-empty list"),
])
def test_bad_plans_are_config_errors(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_recipe({**BASE, **change}, tmp_path)


def test_sweep_needs_a_declared_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no vars.beta"):
        plan_recipe(BASE, tmp_path, sweep=parse_sweep(["beta=1,2"]))
    for bad in ("beta", "beta=", "=1,2", "b-c=1"):
        with pytest.raises(ConfigError, match="--sweep"):
            parse_sweep([bad])


def test_staged_sweep_trains_resumes_across_stages_and_publishes(image_folder: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(BASE, sort_keys=False))
    out = tmp_path / "run"
    argv = ["train", str(recipe), "--out", str(out), "--data", str(image_folder), "--no-progress",
            "--sweep", "w=0.5,0.25"]
    assert main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert [r["done"] for r in plan["runs"]] == [True, True, True] and plan["points"] == ["w=0.5", "w=0.25"]
    tune = out / "w=0.25" / "tune"
    assert yaml.safe_load((tune / "config.yaml").read_text())["init"] == str(out / "base" / "model.safetensors")
    # a kill during the last stage: its files are gone; --resume trains only that stage again
    base_log = (out / "base" / "log.jsonl").read_text()
    first_log = (out / "w=0.5" / "tune" / "log.jsonl").read_text()
    for f in tune.iterdir():
        f.unlink()
    assert main(argv + ["--resume"]) == 0
    assert (out / "base" / "log.jsonl").read_text() == base_log
    assert (out / "w=0.5" / "tune" / "log.jsonl").read_text() == first_log
    assert (tune / "metrics.json").is_file()
    capsys.readouterr()
    dest = tmp_path / "published"
    assert main(["publish", str(out), "--name", "tiny", "--data", str(image_folder), "--dest", str(dest)]) == 0
    names = sorted(p.name for p in dest.iterdir())
    assert "tiny_0p5.safetensors" in names and "tiny_0p25.safetensors" in names
    assert "tiny_0p25.base.yaml" in names and "tiny_0p25.base.log.jsonl" in names
    from edgesplit.train import load

    assert load(dest / "tiny_0p25.safetensors")  # the fp16 file rebuilds
    assert main(["publish", str(out), "--name", "t_w{value}", "--data", str(image_folder), "--dest", str(dest)]) == 0
    assert (dest / "t_w0p5.safetensors").is_file()


def test_publish_refuses_an_unfinished_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "run").mkdir()
    assert main(["publish", str(tmp_path / "run"), "--name", "x", "--data", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
