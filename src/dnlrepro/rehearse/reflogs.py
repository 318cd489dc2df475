"""The rehearsal mirror's miniature training logs, under the real ``<config>-<stamp>.log.json``.

A miniature log has the published log's format (docs/reference.md §6.4: metadata line, a train
line every ``log_interval`` iterations, a val line at every evaluation, fractions, 5 decimals) and
the lr that the rehearsed profile's schedule gives at each logged iteration, so the
while-training comparison (:mod:`dnlrepro.engine.trajectory`) runs in full and passes its lr
check. Its losses and mIoU are placeholders (loss 1.0, mIoU 0): the loss band may warn, the
mIoU never. :func:`wrong_lr` makes one row's lr wrong, to see the comparison stop a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnlrepro.core.config import load_config
from dnlrepro.core.files import file_digest
from dnlrepro.core.profile import read_params
from dnlrepro.core.registry import load_published
from dnlrepro.core.workspace import Workspace
from dnlrepro.engine.reflog import mmcv_round, write

logger = logging.getLogger(__name__)

META = {
    "env_info": "sys.platform: linux\nGPU 0,1: rehearsal miniature\nPyTorch: 1.5.0\nMMCV: 1.1.1",
    "seed": None,
}


def poly(it: int, sched: Any) -> float:
    """mmcv's poly lr at 0-based iteration ``it`` (the same formula as engine.schedule, repeated
    here so that building the mirror imports no torch code)."""
    coeff = (1 - it / sched.max_iters) ** sched.power
    return (sched.lr - sched.min_lr) * coeff + sched.min_lr


def lines(name: str, ws: Workspace, profile: str, lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The miniature log of row ``name`` under ``profile`` (its resolved schedule)."""
    sched = load_config(name, profile, ws=ws).schedule
    out: list[dict[str, Any]] = [{**META, "exp_name": f"{name}.py"}]
    for done in range(1, sched.max_iters + 1):
        lr = mmcv_round(poly(done - 1, sched) * lr_scale)
        if done % sched.log_interval == 0 or done == sched.max_iters:
            out.append({"mode": "train", "epoch": 1, "iter": done, "lr": lr, "loss": 1.0})
        if done % sched.eval_interval == 0 or done == sched.max_iters:
            out.append({"mode": "val", "epoch": 1, "iter": done, "lr": lr, "mIoU": 0.0})
    return out


def miniature_logs(
    root: Path, ws: Workspace, local_path: Callable[[Path, str], Path]
) -> list[tuple[str, str, Path, str]]:
    """Write every row's miniature log where the mirror serves its real URL (``local_path``);
    returns (file name, URL, path, sha256) per log."""
    try:
        profile = read_params(ws).name
    except (OSError, ValueError):  # no params.yaml yet: the configuration files' own values
        profile = "paper"
    out = []
    for name, entry in load_published(ws.registry_file).configs.items():
        dest = local_path(root, entry.log)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write(dest, lines(name, ws, profile))
        out.append((dest.name, entry.log, dest, file_digest(dest)))
    logger.info("mirror: %d miniature training logs (profile %s)", len(out), profile)
    return out
