"""The published protocol on any GPU count: 1 x 8, 2 x 4 and 4 x 2 compute the same iteration.

One real DNLNet segmentor (ResNet-50, SyncBN), one fixed batch of 8 images with ignored pixels,
the same initial weights; one SGD step through the training code (``train_setup.build_model`` /
``wrap_ddp``, ``schedule.build_optimizer``, ``step.train_step``) on 1, 2 and 4 gloo processes,
each taking its slice of the batch as the sampler deals it (core/layout.py). The decode and aux
losses, the BN running statistics and the weights after the step agree to a relative error of
1e-5 (norm of the difference over norm of the 1 x 8 value, per tensor). Dropout is set to 0: its
masks are drawn per process and are the one thing a layout changes (docs/pipeline.md, "Protocol
and layout").
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dnlrepro.core.config import load_config
from dnlrepro.core.layout import bn_group, layout_for
from dnlrepro.core.schema import ConfigError
from dnlrepro.engine import distributed, schedule, train_setup
from dnlrepro.engine.step import train_step

CONFIG = "dnl_r50-d8_512x1024_40k_cityscapes"  # published: 4 GPUs x 2 images, SyncBN
OVERRIDES = {
    "model.backbone.pretrained": None,
    "model.decode_head.dropout_ratio": 0.0,
    "model.auxiliary_head.dropout_ratio": 0.0,
}


def _config():
    return load_config(CONFIG, "paper", OVERRIDES)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    img = torch.randn(8, 3, 32, 64, generator=g)
    gt = torch.randint(0, 19, (8, 32, 64), generator=g)
    gt[:, :4] = 255  # ignored pixels count in the loss's denominator (mean over all pixels)
    return img, gt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    try:
        cfg = _config()
        layout = layout_for(cfg, world)
        torch.manual_seed(0)  # the same initial weights in every process and layout
        model = train_setup.build_model(cfg, info, "none")
        ddp = train_setup.wrap_ddp(model, info)
        optimizer = schedule.build_optimizer(model, cfg.schedule)
        img, gt = _batch()
        part = slice(rank * layout.per_gpu_batch, (rank + 1) * layout.per_gpu_batch)
        ddp.train()
        logged = train_step(ddp, img[part], gt[part], optimizer, info=info if world > 1 else None)
        if rank == 0:
            out[world] = {
                "losses": {k: v for k, v in logged.items() if "loss" in k},
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
    finally:
        distributed.cleanup(info)


def _run(world: int) -> dict:
    if world == 1:
        out: dict = {}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(key, None)
        _step(0, 1, 0, out)
        return out[1]
    shared = mp.Manager().dict()
    mp.spawn(_step, args=(world, _free_port(), shared), nprocs=world, join=True)
    return shared[world]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.slow
def test_one_two_and_four_gpus_compute_the_same_step() -> None:
    reference = _run(1)  # 1 x 8: plain BN over the whole batch
    assert set(reference["losses"]) >= {"decode.loss_seg", "aux.loss_seg", "loss"}
    # The step moves the weights by far more than the tolerance: agreeing is not vacuous.
    initial = _initial_state()
    moved = [_relative_error(reference["state"][k], v) for k, v in initial.items()]
    assert sum(m > 1e-3 for m in moved) > 100
    for world in (2, 4):  # 2 x 4 and 4 x 2, SyncBN across the processes
        got = _run(world)
        for name, value in reference["losses"].items():
            assert abs(got["losses"][name] - value) <= 1e-5 * abs(value), (world, name)
        stats = [k for k in reference["state"] if k.endswith(("running_mean", "running_var"))]
        weights = [k for k, v in reference["state"].items() if v.is_floating_point()]
        assert len(stats) > 100 and len(weights) > len(stats)  # every BN of the ResNet-50
        errors = {k: _relative_error(got["state"][k], reference["state"][k]) for k in weights}
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 1e-5, (world, worst, errors[worst])


def _initial_state() -> dict[str, torch.Tensor]:
    cfg = _config()
    torch.manual_seed(0)
    info = distributed.DistInfo(0, 0, 1, torch.device("cpu"), None)
    state = train_setup.build_model(cfg, info, "none").state_dict()
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_a_count_that_does_not_divide_the_global_batch_is_refused() -> None:
    cfg = _config()
    assert [layout_for(cfg, n).per_gpu_batch for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert bn_group(cfg, layout_for(cfg, 2)) == 8  # SyncBN: the whole batch
    with pytest.raises(ConfigError, match=r"use one of 1, 2, 4, 8"):
        layout_for(cfg, 3)
    ade = load_config("dnl_r50-d8_512x512_80k_ade20k", "paper")
    with pytest.raises(ConfigError, match=r"global batch of .* \(16 = .*use one of 1, 2, 4, 8, 16"):
        layout_for(ade, 6)
