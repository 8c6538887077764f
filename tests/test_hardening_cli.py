"""``edgesplit eval`` in a torch-free install and with a quality out of range: clear errors, no traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit import cli
from edgesplit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _eval_args(target: Path, **kw: object) -> argparse.Namespace:
    base = dict(target=str(target), data="data", limit=None, subset="all", input_codec="jpeg", quality=None,
                backend="onnxruntime", json=False)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_eval_quality_must_be_1_to_100(tmp_path: Path, quality: int) -> None:
    with pytest.raises(ConfigError, match="1..100"):
        cli._cmd_eval(_eval_args(tmp_path / "model.safetensors", quality=quality))


def test_eval_of_a_checkpoint_without_torch_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys, argparse; sys.modules['torch'] = None\n"
            "from edgesplit import cli\n"
            "from edgesplit.errors import EdgesplitError\n"
            "args = argparse.Namespace(target=sys.argv[1], data='d', limit=None, subset='all', input_codec=None, "
            "quality=None, backend='onnxruntime', json=False)\n"
            "try:\n    cli._cmd_eval(args)\nexcept EdgesplitError as exc:\n    print(type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.safetensors")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "BackendUnavailable" in proc.stdout and "edgesplit[train]" in proc.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`edgesplit schema | head -1`: the pipe closes under the command; no traceback, the shell's SIGPIPE status."""
    proc = subprocess.Popen([sys.executable, "-m", "edgesplit.cli", "schema"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # type: ignore[union-attr]  # closed before the command writes: its first write fails
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err
