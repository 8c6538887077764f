"""CI runs what the README says: `.ci/run` calls the README's make targets, which split the suite on the slow mark."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _make_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_ci_runs_the_readme_test_commands_fast_then_slow() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    steps = re.findall(r'^step "([^"]+)" (.+)$', ci, flags=re.M)
    assert steps == [("fast tests", "make test"), ("slow tests", "make test-slow")]
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make test\s+#", readme, flags=re.M) and re.search(r"^make test-slow\s+#", readme, flags=re.M)
    assert _make_recipe("test") == ['$(PY) -m pytest -q -m "not slow"']
    assert _make_recipe("test-slow") == ["$(PY) -m pytest -q -m slow"]


def test_every_marker_used_is_registered_and_markers_are_strict() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"].split()
    registered = {m.split(":")[0].strip() for m in options["markers"]}
    builtin = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
    used = {m for p in (REPO / "tests").glob("*.py") for m in re.findall(r"pytest\.mark\.(\w+)", p.read_text())}
    assert "slow" in used and used - builtin <= registered
