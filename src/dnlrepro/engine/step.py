"""One training step: the only place where the loss is summed, checked and applied.

§ numbers refer to docs/reference.md.

Used by the train loop (:mod:`dnlrepro.engine.train`), the "Mem (GB)" measurement
(:mod:`dnlrepro.bench.benchmark`) and ``benchmarks/bench_train_step.py``, so the three measure
the same thing. What it reproduces (docs/reference.md §1.6, §4.1):

* forward under autocast when ``runtime.amp`` asks for it; the model returns its losses already
  weighted (decode 1.0, aux 0.4, §1.6) next to accuracies;
* the loss is the sum of every output whose key contains ``loss`` (mmseg ``_parse_losses``);
* the logged values are averaged over ranks, as ``_parse_losses`` does. That reduction is also the
  NaN check: every rank sees the same numbers, so all stop together, before the bad step is applied;
* zero_grad, backward, SGD step (through the fp16 ``GradScaler`` when there is one).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from dnlrepro.engine import distributed
from dnlrepro.engine.distributed import DistInfo
from dnlrepro.engine.resume import find_resume

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainError(RuntimeError):
    """Training cannot continue; the message says why and what to do."""


class NonFiniteLossError(TrainError):
    """The loss became NaN/inf; the run stops before the bad step is applied."""


def train_step(
    model: nn.Module,
    img: torch.Tensor,
    gt: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    *,
    amp: str = "none",
    info: DistInfo | None = None,
    iteration: int = 0,
    max_iters: int = 1,
    work_dir: Path | None = None,
) -> dict[str, float]:
    """Forward, loss, NaN check, backward and optimizer step for one batch.

    Args:
        model: the segmentor, possibly DDP-wrapped (``model(img, gt)`` returns the loss dict).
        img: [N, 3, h, w] normalised images on the model's device.
        gt: [N, h, w] int64 labels, 255 = ignore.
        optimizer: its lr is already set for this iteration.
        scaler: the fp16 ``GradScaler`` (a disabled one is a plain backward/step); None: plain.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` (``runtime.amp``).
        info: the process group; None: one process, nothing to average.
        iteration: 0-based index of this iteration, ``max_iters`` the schedule length, and
            ``work_dir`` the folder of the resume checkpoints: all three only name where the run
            stopped in the :class:`NonFiniteLossError` message.

    Returns:
        The logged values averaged over ranks: every model output and ``loss``, as floats.

    Raises:
        NonFiniteLossError: the loss is NaN/inf on any rank; the weights are untouched.
    """
    with torch.autocast(img.device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none"):
        outputs = model(img, gt)
    loss = sum(v for k, v in outputs.items() if "loss" in k)
    names = [*outputs.keys(), "loss"]
    values = torch.stack([v.detach().float() for v in outputs.values()] + [loss.detach()])
    if info is not None:
        values = distributed.reduce_mean(values.cpu(), info)
    logged = dict(zip(names, values.tolist(), strict=True))
    if not math.isfinite(logged["loss"]):
        last_good = find_resume(work_dir) if work_dir is not None else None
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration + 1}/{max_iters} "
            f"({format_values(logged)}); no step was applied and the last good checkpoint "
            f"{last_good or '(none yet)'} is kept. Lower schedule.lr, turn off runtime.amp, or "
            "check the labels"
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return logged


def format_values(values: dict[str, float]) -> str:
    """``"decode.loss_seg: 2.9444, loss: 4.1222"`` (mmcv's log line layout)."""
    return ", ".join(f"{k}: {v:.4f}" for k, v in values.items())
