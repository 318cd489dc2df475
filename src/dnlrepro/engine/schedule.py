"""Optimizer and learning-rate schedule of the mmseg 0.x DNLNet configs
(docs/reference.md §4.1, §4.2).

§ numbers refer to docs/reference.md.

* SGD, lr 0.01, momentum 0.9, weight decay 5e-4 on *every* parameter (no ``paramwise_cfg``, §4.2:
  BN weights/biases and conv biases are decayed too), no Nesterov, no gradient clipping.
* mmcv ``PolyLrUpdaterHook`` with ``by_epoch=False``: before every iteration ``it`` (counting from
  0) the learning rate is set to ``(base - min) * (1 - it / max_iters) ** power + min``. No warm-up.

The schedule is a pure function of the iteration (nanoGPT's ``get_lr``) so a resumed run gets the
same learning rate at the same iteration without any scheduler state.
"""

from __future__ import annotations

import torch
from torch import nn

from dnlrepro.core.config import ScheduleConfig


def poly_lr(it: int, max_iters: int, base_lr: float, min_lr: float, power: float) -> float:
    """mmcv's poly learning rate at iteration ``it`` (0-based), §4.1.

    Args:
        it: the iteration about to run, ``0 <= it <= max_iters``.
        max_iters: the schedule length (40000, 80000 or 160000 in the paper profile).
        base_lr: the optimizer's initial lr (0.01).
        min_lr: the floor reached at ``it == max_iters`` (1e-4).
        power: the poly exponent (0.9).

    Raises:
        ValueError: when ``it`` is outside ``[0, max_iters]`` or ``max_iters < 1``.
    """
    if max_iters < 1:
        raise ValueError(f"schedule.max_iters must be >= 1, got {max_iters}")
    if not 0 <= it <= max_iters:
        raise ValueError(f"iteration {it} is outside the schedule [0, {max_iters}]")
    coeff = (1.0 - it / max_iters) ** power
    return (base_lr - min_lr) * coeff + min_lr


def lr_at(it: int, sched: ScheduleConfig) -> float:
    """:func:`poly_lr` with the numbers of a config's ``schedule`` section."""
    return poly_lr(it, sched.max_iters, sched.lr, sched.min_lr, sched.power)


def build_optimizer(model: nn.Module, sched: ScheduleConfig) -> torch.optim.SGD:
    """SGD over all parameters with one param group: same lr and weight decay everywhere (§4.2)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=sched.lr,
        momentum=sched.momentum,
        weight_decay=sched.weight_decay,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` into every param group (mmcv's ``_set_lr`` before each iteration)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
