"""CPUSyncBatchNorm over 2 gloo processes equals BatchNorm2d over the whole batch (SyncBN, §3.5).

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dnlrepro.models import convert_sync_batchnorm, revert_sync_batchnorm
from dnlrepro.models.sync_bn import CPUSyncBatchNorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    net.norm = "SyncBN"  # what convert_sync_batchnorm reads from an EncoderDecoder
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # uneven per-rank sizes (3 + 1 images) check that the global count, not a mean of means, is used
    x = torch.randn(4, 3, 5, 7, generator=g) * 3 + 1
    w = torch.randn(4, 4, 5, 7, generator=g)  # fixed upstream gradient
    return x, w


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        net = convert_sync_batchnorm(_net())
        assert isinstance(net[1], CPUSyncBatchNorm)
        x, w = _batch()
        part = slice(0, 3) if rank == 0 else slice(3, 4)
        y = net(x[part])
        (y * w[part]).sum().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        for gr in grads:  # DDP would average; sum here to compare with the full-batch loss
            dist.all_reduce(gr)
        out[rank] = {
            "y": y.detach(),
            "grads": grads,
            "running_mean": net[1].running_mean.clone(),
            "running_var": net[1].running_var.clone(),
        }
    finally:
        dist.destroy_process_group()


def test_cpu_sync_bn_matches_full_batch_bn():
    ref = _net()
    x, w = _batch()
    y_ref = ref(x)
    (y_ref * w).sum().backward()

    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)

    y = torch.cat([out[0]["y"], out[1]["y"]])
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-5, atol=1e-5)
    for g, p in zip(out[0]["grads"], ref.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    for r in (0, 1):  # every rank holds the same, globally computed running statistics
        torch.testing.assert_close(out[r]["running_mean"], ref[1].running_mean)
        torch.testing.assert_close(out[r]["running_var"], ref[1].running_var)


def test_single_process_keeps_plain_bn_and_revert_restores_it():
    net = _net()
    assert convert_sync_batchnorm(net) is net  # no process group: nothing to synchronise
    from dnlrepro.models.sync_bn import to_cpu_sync_bn

    synced = to_cpu_sync_bn(_net())
    assert isinstance(synced[1], CPUSyncBatchNorm)
    reverted = revert_sync_batchnorm(synced)
    assert type(reverted[1]) is nn.BatchNorm2d
    assert list(reverted.state_dict()) == list(_net().state_dict())
    # outside a process group CPUSyncBatchNorm is BatchNorm2d
    x, _ = _batch()
    torch.testing.assert_close(synced(x), _net()(x))
