"""Config: safe YAML into typed dataclasses; every mistake names the file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.config import TrainConfig, from_dict, load_train_config, load_yaml
from edgesplit.errors import ConfigError

GOOD = """
name: t
model: {name: resnet18, params: {width: 0.5}}
losses:
  - {name: ce, params: {label_smoothing: 0.1}}
  - {name: kd, weight: 0.5}
optimizer: {name: sgd, lr: 0.1, weight_decay: 5e-5}
epochs: 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_good_config_is_typed(tmp_path: Path) -> None:
    cfg = load_train_config(_write(tmp_path, GOOD))
    assert isinstance(cfg, TrainConfig)
    assert cfg.optimizer.weight_decay == pytest.approx(5e-5)  # YAML 1.1 reads 5e-5 as a string
    assert cfg.losses[1].weight == 0.5 and cfg.data.image_size == 128


@pytest.mark.parametrize(
    "patch, where",
    [
        ("epochs: two", "epochs"),
        ("epochs: 2\nbogus: 1", "bogus"),
        ("epochs: 2\ndata: {image_size: 12.5}", "data.image_size"),
        ("epochs: 2\ndata: {val_fraction: 2.0}", "val_fraction"),
        ("epochs: 2\noptimizer: {name: lion}", "optimizer.name"),
        ("epochs: 2\nlosses: [{name: ce, wieght: 1}]", "losses[0].wieght"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, patch: str, where: str) -> None:
    text = GOOD.replace("epochs: 2", patch)
    if "losses: [" in patch:
        text = text.split("losses:")[0] + patch.replace("epochs: 2\n", "epochs: 2\n")
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_train_config(p)
    assert str(p) in str(err.value) and where in str(err.value)


def test_missing_required(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: x\nepochs: 1\nmodel: {name: resnet18}\n")
    with pytest.raises(ConfigError, match="losses: required key is missing"):
        load_train_config(p)


def test_unsafe_yaml_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict(TrainConfig, [1, 2])


def test_repo_configs_validate(tmp_path: Path) -> None:
    from edgesplit.recipe import load_recipe, plan_recipe

    for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        plan = plan_recipe(load_recipe(p), tmp_path / p.stem, source=str(p))  # every stage validated
        assert plan.runs and all(r.config.epochs >= 1 for r in plan.runs)
