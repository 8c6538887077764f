"""Where and how a run trains: the device, the autocast precision, and the torchrun process group.

Every choice is explicit and reported back: ``auto`` resolves to the fastest setting this machine supports, and a
setting the hardware cannot do is a ``ConfigError`` naming the recipe key, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from edgesplit.errors import ConfigError

__all__ = ["Hardware", "Distributed", "resolve_hardware", "cpu_bf16_native", "close_process_group"]

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def cpu_bf16_native() -> bool:
    """True when this CPU has bfloat16 arithmetic (AVX-512-BF16 or AMX), where bf16 autocast pays off.

    On CPUs without it oneDNN emulates bf16 and autocast is usually slower than float32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Distributed:
    """The torchrun process group (``world_size == 1``: a plain single-process run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read torchrun's ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``LOCAL_WORLD_SIZE``."""
        env = os.environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError as exc:
            raise ConfigError(f"torchrun environment is malformed (RANK/WORLD_SIZE must be integers): {exc}") from exc
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world}")
        return cls(rank=rank, local_rank=local_rank, world_size=world, local_world_size=max(1, local_world))

    def init(self, device: torch.device) -> None:
        """Join the process group: gloo for CPU tensors, nccl for CUDA."""
        if not self.active or dist.is_initialized():
            self.backend = dist.get_backend() if dist.is_initialized() else None
            return
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: launch with "
                              "`torchrun --nproc-per-node N edgesplit train ...`")
        kwargs: dict[str, Any] = {"backend": self.backend, "rank": self.rank, "world_size": self.world_size}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)

    def close(self) -> None:
        close_process_group()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (identical starting points)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def all_reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Average the gradients over ranks in one flat bucket (one collective per step).

        A parameter without a gradient on this rank contributes zeros, so every rank runs the same collective.
        """
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            value = flat[offset:offset + n].view_as(g).to(g.dtype)
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)
            offset += n

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) over ranks; integer counters stay."""
        if not self.active:
            return
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b.data)
                    b.data.div_(self.world_size)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum floats over ranks (epoch statistics)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def gather_ints(self, values: list[int]) -> list[list[int]]:
        """Every rank's list of ints, on every rank."""
        if not self.active:
            return [list(values)]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, list(values))
        return out


@dataclass
class Hardware:
    """The resolved device, precision and thread count of a run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    threads: int
    channels_last: bool
    dist: Distributed

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for forward passes in the run's precision (a no-op for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its exponent range underflows small gradients); bf16 and fp32 do not."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    def describe(self) -> dict[str, Any]:
        """What the run actually uses, for the log's first record."""
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "threads": self.threads, "world_size": self.dist.world_size, "rank": self.dist.rank,
                "dist_backend": self.dist.backend, "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": cpu_bf16_native(),
                "cuda_device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None}


def _resolve_device(value: str, source: str, local_rank: int) -> torch.device:
    if not _DEVICE.match(value):
        raise ConfigError(f"{source}: device: {value[:40]!r} is not one of auto, cpu, cuda, cuda:N")
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{source}: device: {value} but no CUDA GPU is available to torch "
                          f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                          "set device: cpu or auto")
    index = int(value.split(":")[1]) if ":" in value else local_rank  # torchrun: one GPU per local rank
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{source}: device: {value} selects GPU {index}, but torch sees "
                          f"{torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def _resolve_precision(value: str, device: torch.device, source: str) -> str:
    if value == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bf16_native() else "fp32"
    if value == "fp16" and device.type != "cuda":
        raise ConfigError(f"{source}: precision: fp16 needs a CUDA device (CPU autocast has no float16 "
                          "training kernels worth using); use bf16 or fp32 on the CPU")
    if value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{source}: precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use fp16 or fp32")
    return value


def resolve_hardware(device: str, precision: str, channels_last: bool, threads: int | None,
                     source: str = "<config>", distributed: Distributed | None = None) -> Hardware:
    """Resolve a recipe's ``device`` / ``precision`` / ``threads`` against this machine (and torchrun)."""
    d = distributed or Distributed.from_env()
    dev = _resolve_device(device, source, d.local_rank)
    prec = _resolve_precision(precision, dev, source)
    if threads is None:  # share the cores between the processes torchrun started on this machine
        threads = max(1, (os.cpu_count() or 1) // d.local_world_size)
    return Hardware(device=dev, precision=prec, threads=threads, channels_last=channels_last, dist=d)



def close_process_group() -> None:
    """Leave the torchrun process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
