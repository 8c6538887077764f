"""The example third-party plugin installs into the environment and is found through the entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_plugin_example_installs_and_registers(tmp_path: Path) -> None:
    src = tmp_path / "plugin_example"
    shutil.copytree(REPO / "samples" / "plugin_example", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", str(src)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    try:
        out = subprocess.run([sys.executable, "-m", "edgesplit.cli", "plugins", "--strict"], check=True,
                             capture_output=True, text=True).stdout
        backbones = next(line for line in out.splitlines() if line.startswith("backbone:"))
        assert "tinynet" in backbones
        code = ("import torch, edgesplit; m = edgesplit.create('backbone', 'tinynet', num_classes=3).eval(); "
                "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
        shape = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert shape.strip() == "(1, 3)"
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "edgesplit-tinynet"],
                       check=False, capture_output=True)
