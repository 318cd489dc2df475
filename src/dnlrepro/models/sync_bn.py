"""Synchronised BatchNorm for CPU process groups (gloo). § numbers refer to docs/reference.md.

mmseg trains every DNLNet row with ``SyncBN`` over 4 GPUs (docs/reference.md §1.1, §3.5): the batch
statistics of each BN layer are computed over all 8 (Cityscapes) or 16 (ADE20K) images, not per
GPU. PyTorch's ``nn.SyncBatchNorm`` implements that with CUDA kernels only and refuses CPU tensors
in training. This module computes the same global statistics with an autograd-aware
``all_reduce`` so that multi-process CPU runs (gloo, the tests, CI) have SyncBN semantics too:

    mean = sum_r sum(x_r) / sum_r n_r,   var = sum_r sum(x_r^2) / sum_r n_r - mean^2   (biased)

Gradients flow through the reduction (``torch.distributed.nn.functional.all_reduce``), which is
exactly what SyncBN's backward computes. Running statistics use the unbiased variance over the
global count and mmcv/PyTorch's momentum update, like ``nn.SyncBatchNorm``. The parameters and
buffers are those of ``nn.BatchNorm2d``, so state-dict keys are unchanged (§1.7).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are reduced over the default process group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])  # [2C+1]
        stats = dist_fn.all_reduce(stats)  # sum over ranks, differentiable
        n = stats[-1]
        mean = stats[:c] / n  # [C]
        var = stats[c : 2 * c] / n - mean * mean  # [C], biased (used to normalise)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        inv_std = torch.rsqrt(var + self.eps)
        y = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def swap_batchnorm(module: nn.Module, match: tuple[type, ...], cls: type) -> nn.Module:
    """Replace every BN layer whose exact type is in ``match`` by ``cls``, sharing its tensors.

    Parameters and buffers are the same objects, so the state dict (keys and values) is unchanged.
    """
    out = module
    if type(module) in match:
        out = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, swap_batchnorm(child, match, cls))
    return out


def to_cpu_sync_bn(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` in ``module`` -> :class:`CPUSyncBatchNorm` (tensors shared)."""
    return swap_batchnorm(module, (nn.BatchNorm2d,), CPUSyncBatchNorm)
