"""Synchronised BatchNorm for CPU process groups (gloo). § numbers refer to docs/reference.md.

mmseg trains every DNLNet row with ``SyncBN`` over 4 GPUs (docs/reference.md §1.1, §3.5): the batch
statistics of each BN layer are computed over all 8 (Cityscapes) or 16 (ADE20K) images, not per
GPU. PyTorch's ``nn.SyncBatchNorm`` implements that with CUDA kernels only and refuses CPU tensors
in training. This module computes the same global statistics with an autograd-aware
``all_reduce`` so that multi-process CPU runs (gloo, the tests, CI) have SyncBN semantics too:

    mean = sum_r sum(x_r) / sum_r n_r,   var = sum_r sum((x_r - mean)^2) / sum_r n_r   (biased)

in two reductions, as ``BatchNorm2d`` computes them in one process: the one-pass form
(``E[x^2] - mean^2``) cancels catastrophically in float32 where ``|mean| >> std``, and made the
layer2-and-below gradients of a 4 x 2 run 1 % off the 1 x 8 ones
(tests/test_layout_equivalence.py). Gradients flow through the reductions
(:class:`_AllReduceSum`: a sum over ranks forward, the sum of the ranks' gradients backward),
which is exactly what SyncBN's backward computes. Running statistics use the unbiased variance
over the global count and mmcv/PyTorch's momentum update, like ``nn.SyncBatchNorm``. The
parameters and buffers are those of ``nn.BatchNorm2d``, so state-dict keys are unchanged (§1.7).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank; backward: ``sum_r grad_r`` (a blocking all_reduce each way;
    ``torch.distributed.nn.functional.all_reduce`` does the same but is deprecated in torch 2.x).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


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
        # Two passes, as BatchNorm2d computes it: the global mean first, then the global sum of
        # squared deviations. One pass (sum of x^2 - n * mean^2) cancels catastrophically where
        # |mean| >> std, e.g. after a ResNet stage's ReLU.
        stats = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))  # [C+1]
        n = stats[-1]
        mean = stats[:c] / n  # [C]
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / n  # [C], biased
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
        y = centred * inv_std[None, :, None, None]
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
