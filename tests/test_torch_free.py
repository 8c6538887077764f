"""The device-side modules must import without torch (DESIGN.md: torch-free core and runtime)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["edgesplit", "edgesplit.errors", "edgesplit.registry", "edgesplit.config", "edgesplit.codec",
           "edgesplit.bitstream", "edgesplit.preprocess", "edgesplit.data", "edgesplit.cli", "edgesplit.runtime"]


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_torch_out(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", f"importing {module} imported torch"


def test_bundle_import_leaves_torch_out() -> None:
    pytest.importorskip("edgesplit.bundle")
    code = "import sys, edgesplit.bundle; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
