"""Runs a recipe's plan (stages, sweep points) in order, skipping finished stages, resuming an interrupted one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgesplit.recipe import RecipePlan

from .checkpoint import atomic_write
from .engine import Trainer
from .hardware import Distributed, close_process_group

__all__ = ["train_plan"]

log = logging.getLogger(__name__)


def _write_plan(plan: RecipePlan, out: Path, results: dict[str, Any]) -> None:
    rows = [{"stage": r.stage, "point": r.point, "name": r.config.name, "out": str(r.out), "done": r.done,
             "val_top1": results.get(str(r.out), {}).get("val_top1")} for r in plan.runs]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "plan.json", lambda tmp: tmp.write_text(json.dumps({"points": plan.points, "runs": rows},
                                                                          indent=2)))


def train_plan(plan: RecipePlan, out: str | Path, *, data_root: str | None = None, resume: bool = False,
               source: str = "<recipe>", progress: bool = True) -> dict[str, Any]:
    """Train every run of ``plan``; returns ``{run directory: metrics}`` (empty on torchrun ranks other than 0).

    A run whose directory already holds ``metrics.json`` is finished and skipped, so ``--resume`` after a kill
    continues with the stage that was interrupted (from its last finished epoch) and then the rest.
    """
    out = Path(out)
    main = Distributed.from_env().main
    results: dict[str, Any] = {}
    try:
        for i, run in enumerate(plan.runs):
            label = f"{run.point + ' / ' if run.point else ''}{run.stage or run.config.name}"
            if run.done:
                log.info("stage %d/%d (%s) already finished in %s", i + 1, len(plan.runs), label, run.out)
                results[str(run.out)] = json.loads((run.out / "metrics.json").read_text())
                continue
            log.info("stage %d/%d (%s) -> %s", i + 1, len(plan.runs), label, run.out)
            if main:
                _write_plan(plan, out, results)
            metrics = Trainer(run.config, run.out, data_root=data_root, source=source,
                              progress=progress).run(resume=resume)
            if main:
                results[str(run.out)] = metrics
        if main:
            _write_plan(plan, out, results)
    finally:
        close_process_group()
    return results if main else {}
