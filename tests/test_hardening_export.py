"""Exports never leave debris: SIGTERM cleans up like Ctrl-C, a SIGKILLed export's partial directory is swept by
the next write of the same bundle, and an --out under a regular file is a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edgesplit.bundle import BundleWriter, scratch_directory, sweep_partials
from edgesplit.errors import BundleError

REPO = Path(__file__).resolve().parents[1]

_WRITER = """
import sys, time
from pathlib import Path
from edgesplit.bundle import BundleWriter
from edgesplit.export.cli import _sigterm_as_interrupt
dest = Path(sys.argv[1])
try:
    with _sigterm_as_interrupt(), BundleWriter(dest) as writer:
        writer.path("graph.onnx").write_bytes(b"x" * 100_000)
        print(writer.tmp, flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _start_writer(dest: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir() and partial.name.startswith(f".{dest.name}.partial-")
    return proc, partial


def _backdate(path: Path) -> None:
    old = time.time() - 60
    os.utime(path, (old, old))


def test_sigterm_during_an_export_removes_the_partial_bundle(tmp_path: Path) -> None:
    proc, partial = _start_writer(tmp_path / "b.bundle")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert not partial.exists() and list(tmp_path.iterdir()) == []


def test_a_killed_exports_partial_is_swept_by_the_next_one(tmp_path: Path) -> None:
    dest = tmp_path / "b.bundle"
    proc, partial = _start_writer(dest)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait(timeout=30)
    assert partial.is_dir()
    _backdate(partial)
    other = tmp_path / ".other.bundle.partial-abc"  # another target's partial is not ours to remove
    other.mkdir()
    _backdate(other)
    with BundleWriter(dest) as writer:
        assert not partial.exists() and writer.tmp.is_dir()
    assert other.is_dir()


def test_a_live_writers_partial_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "b.bundle"
    with BundleWriter(dest) as first:
        _backdate(first.tmp)
        assert sweep_partials(dest) == []
        with BundleWriter(dest, overwrite=True) as second:
            assert first.tmp.is_dir() and second.tmp.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_regular_file_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    for dest in (tmp_path / "file" / "b.bundle", tmp_path / "file" / "deeper" / "b.bundle"):
        with pytest.raises(BundleError, match="not a directory|choose another --out"):
            BundleWriter(dest)


def test_a_killed_exports_scratch_directory_is_removed_by_the_next(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "edgesplit-export-killed"  # what SIGKILL leaves: nobody holds its lock
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x")
    live = tmp_path / "edgesplit-export-running"  # another export still at work: it holds the lock
    live.mkdir()
    old = time.time() - 60
    for d in (stale, live):
        os.utime(d, (old, old))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with scratch_directory("edgesplit-export-") as scratch:
            assert scratch.is_dir() and scratch.parent == tmp_path
            assert not stale.exists() and live.is_dir()
        assert not scratch.exists()
    finally:
        os.close(fd)
