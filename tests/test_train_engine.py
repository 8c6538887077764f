"""Training engine hardware settings: device / precision keys, bf16 autocast, the data pipeline, the teacher cache,
and multi-process DDP through torchrun (2 gloo processes on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesplit.config import TrainConfig, from_dict
from edgesplit.data import ImageCache, ImageFolder, shard_epoch
from edgesplit.errors import ConfigError, DataError
from edgesplit.train import load, train
from edgesplit.train.hardware import Distributed, cpu_bf16_native, resolve_hardware

from .conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _cfg(**over) -> TrainConfig:
    return from_dict(TrainConfig, tiny_recipe(**over))


def _records(out: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == event]


# -- config keys ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,match", [
    ("device", "gpu", "device"),
    ("device", "cuda:x", "device"),
    ("precision", "fp8", "precision"),
    ("threads", 0, "threads"),
])
def test_bad_hardware_keys_are_config_errors(key: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**{key: value})


def test_data_workers_and_teacher_cache_are_validated() -> None:
    with pytest.raises(ConfigError, match="data.workers"):
        _cfg(data={"workers": -1})
    with pytest.raises(ConfigError, match="teacher_cache.*data.augment"):
        _cfg(teacher_cache=True)
    with pytest.raises(ConfigError, match="data.mixup"):
        _cfg(teacher_cache=True, data={"augment": False, "mixup": 0.2})
    assert _cfg(teacher_cache=True, data={"augment": False}).teacher_cache


def test_fp16_on_cpu_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="precision: fp16 needs a CUDA device"):
        resolve_hardware("cpu", "fp16", True, 1, "recipe.yaml", Distributed())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_refused_naming_the_key(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device: cuda but no CUDA GPU"):
        train(_cfg(device="cuda"), tmp_path / "r", data_root=str(image_folder), progress=False)


def test_auto_resolves_to_what_the_machine_has() -> None:
    hw = resolve_hardware("auto", "auto", True, None, "r", Distributed())
    want_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert hw.device.type == want_device
    if want_device == "cpu":
        assert hw.precision == ("bf16" if cpu_bf16_native() else "fp32")
    assert hw.threads >= 1


# -- precision -----------------------------------------------------------------------------------------------
def test_bf16_step_trains_and_logs_what_it_used(image_folder: Path, tmp_path: Path) -> None:
    fp32 = train(_cfg(seed=3), tmp_path / "fp32", data_root=str(image_folder), progress=False)
    bf16 = train(_cfg(seed=3, precision="bf16"), tmp_path / "bf16", data_root=str(image_folder), progress=False)
    start = _records(tmp_path / "bf16", "start")[0]
    assert start["precision"] == "bf16" and start["device"] == "cpu" and start["world_size"] == 1
    l32 = _records(tmp_path / "fp32", "step")[0]["loss"]
    l16 = _records(tmp_path / "bf16", "step")[0]["loss"]
    assert np.isfinite(l16) and l16 != l32  # autocast ran (bf16 rounding moves the loss) ...
    assert abs(l16 - l32) < 0.05 * abs(l32)  # ... by a rounding, not a different computation
    epoch = _records(tmp_path / "bf16", "epoch")[0]
    assert epoch["images_per_s"] > 0 and 0.0 <= epoch["data_wait_share"] <= 1.0
    assert fp32["hardware"]["precision"] == "fp32" and bf16["hardware"]["precision"] == "bf16"
    state = load(tmp_path / "bf16" / "model.safetensors").state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # weights stay fp32


def test_entropy_bottleneck_likelihoods_stay_float32_under_autocast() -> None:
    from edgesplit.plugins.entropic.bottleneck import EntropyBottleneck

    eb = EntropyBottleneck(4).train()
    y = torch.randn(2, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = torch.nn.functional.conv2d(y, torch.eye(4).view(4, 4, 1, 1))  # a bf16 activation, as from an encoder
        assert y_bf.dtype == torch.bfloat16
        _, lik = eb(y_bf)
        aux = eb.aux_loss()
    assert lik.dtype == torch.float32 and aux.dtype == torch.float32
    eb.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_hat, _ = eb(y)
    assert torch.equal(y_hat, eb.dequantize(eb.quantize_symbols(y)))  # rounding in float32, as exported


# -- data pipeline -------------------------------------------------------------------------------------------
def test_shards_are_disjoint_and_cover_what_one_process_sees() -> None:
    single = shard_epoch(50, 12, seed=1, epoch=2)
    ranks = [shard_epoch(50, 12, seed=1, epoch=2, rank=r, world_size=3) for r in range(3)]
    assert len(single) == 4 and all(len(r) == 4 for r in ranks)
    for step, (pos, idx) in enumerate(single):
        parts = [ranks[r][step][1] for r in range(3)]
        assert sorted(np.concatenate(parts).tolist()) == sorted(idx.tolist())
    seen = [set(np.concatenate([b[1] for b in r]).tolist()) for r in ranks]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert shard_epoch(50, 12, 1, 3)[0][1].tolist() != single[0][1].tolist()  # a new order every epoch
    with pytest.raises(DataError, match="divide evenly"):
        shard_epoch(50, 12, 1, 0, rank=0, world_size=5)


def test_batches_do_not_depend_on_workers(image_folder: Path) -> None:
    ds = ImageFolder(image_folder)
    cache = ImageCache(ds, range(len(ds)), workers=2)
    assert len(cache) == len(ds)

    def epoch(workers: int) -> list[np.ndarray]:
        return [x for x, _, _ in cache.train_batches(5, 24, 0, 1, (0.3, 1.0), workers=workers, prefetch=2)]

    inline, threaded = epoch(0), epoch(2)
    assert len(inline) == len(ds) // 5
    assert all(np.array_equal(a, b) for a, b in zip(inline, threaded))
    fixed = [x for x, _, _ in cache.train_batches(5, 24, 0, 1, (0.3, 1.0), augment=False)]
    again = [x for x, _, _ in cache.train_batches(5, 24, 0, 2, (0.3, 1.0), augment=False)]
    # deterministic crops: the same image gives the same pixels in every epoch (orders differ)
    first = {int(i): x for xs, _, ids in cache.train_batches(5, 24, 0, 1, (0.3, 1.0), augment=False)
             for i, x in zip(ids, xs)}
    second = {int(i): x for xs, _, ids in cache.train_batches(5, 24, 0, 2, (0.3, 1.0), augment=False)
              for i, x in zip(ids, xs)}
    assert fixed and again and all(np.array_equal(first[i], second[i]) for i in set(first) & set(second))


def test_teacher_cache_runs_the_teacher_once_per_image(image_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    teacher_dir = tmp_path / "teacher"
    train(_cfg(), teacher_dir, data_root=str(image_folder), progress=False)
    import edgesplit.train.engine as engine

    calls = {"images": 0}
    real_load = engine.load

    def counting_load(path, **kw):
        model = real_load(path, **kw)
        inner = model.forward_stages

        def forward_stages(x, *a, **k):
            calls["images"] += x.shape[0]
            return inner(x, *a, **k)

        model.forward_stages = forward_stages
        return model

    monkeypatch.setattr(engine, "load", counting_load)
    cfg = _cfg(epochs=3, teacher=str(teacher_dir / "model.safetensors"), losses=[{"name": "kd"}],
               teacher_cache=True, data={"image_size": 32, "val_fraction": 0.25, "augment": False, "workers": 0})
    train(cfg, tmp_path / "cached", data_root=str(image_folder), progress=False)
    dry_run = 2
    # 18 training images, batch 6: 3 steps per epoch; every image reaches the teacher in the first epoch only
    assert calls["images"] - dry_run <= 18
    calls["images"] = 0
    cfg.teacher_cache = False
    train(cfg, tmp_path / "plain", data_root=str(image_folder), progress=False)
    assert calls["images"] - dry_run == 3 * 18


def test_model_mistakes_are_reported_before_images_are_decoded(image_folder: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import edgesplit.train.engine as engine

    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before the model was checked")

    teacher_dir = tmp_path / "teacher"
    train(_cfg(), teacher_dir, data_root=str(image_folder), progress=False)
    monkeypatch.setattr(engine, "ImageCache", no_decoding)
    cfg = _cfg(teacher=str(teacher_dir / "model.safetensors"), losses=[{"name": "kd"}],
               model={"name": "resnet18", "params": {"width": 0.125, "num_classes": 5}})
    with pytest.raises(ConfigError, match="5 outputs but the teacher .* has 3 classes"):
        train(cfg, tmp_path / "r", data_root=str(image_folder), progress=False)


# -- DDP through torchrun -------------------------------------------------------------------------------------
def _torchrun(args: list[str], tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
           *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp_path: Path, epochs: int) -> Path:
    p = tmp_path / f"tiny{epochs}.yaml"
    p.write_text(f"""
name: tiny
model: {{name: resnet18, params: {{width: 0.125}}}}
data: {{image_size: 32, val_fraction: 0.25, workers: 1}}
losses: [{{name: ce}}]
optimizer: {{name: adam, lr: 0.01}}
epochs: {epochs}
batch_size: 6
threads: 1
precision: fp32
""")
    return p


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_gloo_processes_train_resume_and_evaluate(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    edgesplit = str(BIN / "edgesplit")
    r = _torchrun([edgesplit, "train", str(_recipe(tmp_path, 1)), "--out", str(out), "--data", str(image_folder),
                   "--no-progress", "--no-report"], tmp_path, _free_port())
    assert r.returncode == 0, r.stderr[-3000:]
    start = _records(out, "start")
    assert len(start) == 1 and start[0]["world_size"] == 2 and start[0]["dist_backend"] == "gloo"
    assert start[0]["batch_per_process"] == 3
    # resume under DDP: the recipe now asks for 2 epochs; epoch 1 is not redone
    r = _torchrun([edgesplit, "train", str(_recipe(tmp_path, 2)), "--out", str(out), "--data", str(image_folder),
                   "--no-progress", "--no-report", "--resume"], tmp_path, _free_port())
    assert r.returncode == 0, r.stderr[-3000:]
    assert [e["epoch"] for e in _records(out, "epoch")] == [1, 2]
    assert len(_records(out, "start")) == 2  # one writer: rank 0 logs each launch once
    # the checkpoint loads and evaluates
    ev = subprocess.run([edgesplit, "eval", str(out / "model.safetensors"), "--data", str(image_folder), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["images"] == 24
    model = load(out / "model.safetensors")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


DISJOINT = """
import json, sys
import torch.distributed as dist
from edgesplit.data import shard_epoch
from edgesplit.train.hardware import Distributed
import torch
d = Distributed.from_env(); d.init(torch.device("cpu"))
mine = [int(i) for _, idx in shard_epoch(40, 8, seed=0, epoch=0, rank=d.rank, world_size=d.world_size) for i in idx]
everyone = d.gather_ints(mine)
if d.main:
    open(sys.argv[1], "w").write(json.dumps(everyone))
d.close()
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_processes_see_disjoint_images(tmp_path: Path) -> None:
    script = tmp_path / "shards.py"
    script.write_text(DISJOINT)
    result = tmp_path / "shards.json"
    r = _torchrun([str(script), str(result)], tmp_path, _free_port())
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(result.read_text())
    assert len(a) == len(b) == 20 and not set(a) & set(b) and sorted(a + b) == list(range(40))
