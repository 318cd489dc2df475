"""Poly lr (mmcv formula, §4.1), SGD settings (§4.2) and the resumable distributed sampler.

§ numbers refer to docs/reference.md.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DistributedSampler

from dnlrepro.core.config import load_config
from dnlrepro.engine.sampler import InfiniteDistributedSampler, sample_seed
from dnlrepro.engine.schedule import build_optimizer, lr_at, poly_lr, set_lr


@pytest.mark.parametrize(
    ("it", "expected"),
    [
        (0, 0.01),
        # (0.01 - 1e-4) * (1 - 20000/40000) ** 0.9 + 1e-4, worked out by hand: 0.5 ** 0.9 = 0.535887
        (20000, 0.0099 * 0.5358867312681466 + 1e-4),
        (39999, 0.0099 * (1 / 40000) ** 0.9 + 1e-4),
        (40000, 1e-4),
    ],
)
def test_poly_lr_matches_mmcv_formula(it: int, expected: float) -> None:
    assert poly_lr(it, 40000, 0.01, 1e-4, 0.9) == pytest.approx(expected, rel=1e-12)


def test_poly_lr_is_monotone_and_uses_config_numbers() -> None:
    cfg = load_config("dnl_r50-d8_512x1024_80k_cityscapes", "paper")
    lrs = [lr_at(it, cfg.schedule) for it in range(0, 80001, 4000)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(lrs))


def test_poly_lr_rejects_iterations_outside_the_schedule() -> None:
    with pytest.raises(ValueError, match="outside the schedule"):
        poly_lr(41, 40, 0.01, 1e-4, 0.9)
    with pytest.raises(ValueError, match="max_iters"):
        poly_lr(0, 0, 0.01, 1e-4, 0.9)


def test_sgd_decays_every_parameter_with_one_lr() -> None:
    cfg = load_config("dnl_r50-d8_512x1024_40k_cityscapes", "paper")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4))
    opt = build_optimizer(model, cfg.schedule)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert len(group["params"]) == len(list(model.parameters()))  # BN weight/bias included
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert group["nesterov"] is False
    set_lr(opt, 0.005)
    assert opt.param_groups[0]["lr"] == 0.005


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 3), (7, 4), (2, 4)])
def test_sampler_matches_torch_distributed_sampler(n: int, world: int) -> None:
    for rank in range(world):
        ours = InfiniteDistributedSampler(n, rank=rank, world_size=world, seed=5)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=5)
        stream = list(itertools.islice(iter(ours), 3 * len(ref)))
        for epoch in range(3):
            ref.set_epoch(epoch)
            got = [i for i, _ in stream[epoch * len(ref) : (epoch + 1) * len(ref)]]
            assert got == list(ref), (rank, epoch)


def test_sampler_resume_continues_the_same_stream() -> None:
    full = list(itertools.islice(iter(InfiniteDistributedSampler(5, 1, 2, seed=3)), 20))
    for start in (0, 1, 3, 7, 11):
        resumed = InfiniteDistributedSampler(5, 1, 2, seed=3, start=start)
        assert list(itertools.islice(iter(resumed), 20 - start)) == full[start:]


def test_sample_seeds_are_deterministic_and_distinct() -> None:
    a = list(itertools.islice(iter(InfiniteDistributedSampler(6, 0, 2, seed=0)), 9))
    b = list(itertools.islice(iter(InfiniteDistributedSampler(6, 1, 2, seed=0)), 9))
    seeds = [s for _, s in a + b]
    assert len(set(seeds)) == len(seeds)  # no two samples share augmentation randomness
    assert a[0][1] == sample_seed(0, 0, 0)
    assert b[4][1] == sample_seed(0, 1, 1 + 1 * 2)  # rank 1, epoch 1, 2nd element: position 3
    other = list(itertools.islice(iter(InfiniteDistributedSampler(6, 0, 2, seed=1)), 9))
    assert [s for _, s in other] != [s for _, s in a]


def test_sampler_rejects_empty_dataset_and_bad_rank() -> None:
    with pytest.raises(ValueError, match="training set is empty"):
        InfiniteDistributedSampler(0)
    with pytest.raises(ValueError, match="rank 2"):
        InfiniteDistributedSampler(4, rank=2, world_size=2)


def test_sampler_permutation_uses_torch_generator_recipe() -> None:
    g = torch.Generator()
    g.manual_seed(11 + 2)
    expected = torch.randperm(8, generator=g).tolist()
    assert InfiniteDistributedSampler(8, seed=11).epoch_indices(2) == expected


def _mmseg_batches(n: int, world: int, rank: int, batch: int, epochs: int, seed: int) -> list:
    """mmseg's training loader (§3.5): DistributedSampler(shuffle) in DataLoader(drop_last=True),
    restarted with set_epoch by mmcv's IterLoader whenever it runs out."""
    ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    batches = []
    for epoch in range(epochs):
        ref.set_epoch(epoch)
        batches += list(BatchSampler(ref, batch, drop_last=True))
    return batches


@pytest.mark.parametrize(
    ("n", "world", "batch"),
    [(20210, 4, 4), (5, 1, 2), (5, 2, 2), (7, 3, 2), (16, 4, 2)],
)
def test_sampler_epochs_end_at_the_last_full_batch_like_mmseg(n, world, batch) -> None:
    epochs = 3
    for rank in range(world):
        ours = InfiniteDistributedSampler(n, rank, world, seed=7, batch_size=batch)
        expected = _mmseg_batches(n, world, rank, batch, epochs, seed=7)
        stream = [i for i, _ in itertools.islice(iter(ours), len(expected) * batch)]
        got = [stream[b : b + batch] for b in range(0, len(stream), batch)]
        assert got == expected, (rank, n, world, batch)
        assert len(ours) == len(expected) // epochs * batch


def test_ade20k_epoch_drops_one_image_per_rank() -> None:
    """20210 images, 4 ranks x 4 (§3.5): 5053 per rank, 1263 batches, the 5053rd image skipped."""
    for rank in range(4):
        ours = InfiniteDistributedSampler(20210, rank, 4, seed=0, batch_size=4)
        assert (ours.per_rank, len(ours), len(ours) // 4) == (5053, 5052, 1263)
        ref = DistributedSampler(range(20210), num_replicas=4, rank=rank, shuffle=True, seed=0)
        ref.set_epoch(0)
        share = list(ref)
        stream = itertools.islice(iter(ours), 5052, 5056)  # the first batch of epoch 1
        ref.set_epoch(1)
        assert [i for i, _ in stream] == list(ref)[:4]
        assert ours.epoch_indices(0) == share[:5052]  # share[5052] waits for a later epoch


def test_sampler_resume_across_dropped_elements() -> None:
    full = list(
        itertools.islice(iter(InfiniteDistributedSampler(5, 1, 2, seed=3, batch_size=2)), 12)
    )
    for start in (0, 2, 4, 6, 10):  # resume points are whole batches: iteration * batch
        resumed = InfiniteDistributedSampler(5, 1, 2, seed=3, start=start, batch_size=2)
        assert list(itertools.islice(iter(resumed), 12 - start)) == full[start:]
    # n=5 over 2 ranks: 3 per rank, one batch of 2 per epoch; position 3 is rank 1's 2nd element.
    assert [s for _, s in full[:4]] == [
        sample_seed(3, e, p) for e, p in ((0, 1), (0, 3), (1, 1), (1, 3))
    ]


def test_sampler_rejects_fewer_images_than_a_batch() -> None:
    with pytest.raises(ValueError, match="fewer than one batch of 2"):
        InfiniteDistributedSampler(3, rank=0, world_size=4, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        InfiniteDistributedSampler(3, batch_size=0)


def _iterations(n: int, world: int, global_batch: int, protocol_ranks: int, iters: int) -> list:
    """The global batch of each of ``iters`` iterations: every rank's slice, rank by rank."""
    per_gpu = global_batch // world
    streams = [
        list(
            itertools.islice(
                iter(InfiniteDistributedSampler(n, r, world, 9, batch_size=per_gpu,
                                                protocol_ranks=protocol_ranks)),
                iters * per_gpu,
            )
        )
        for r in range(world)
    ]  # fmt: skip
    return [
        [pair for s in streams for pair in s[i * per_gpu : (i + 1) * per_gpu]] for i in range(iters)
    ]


@pytest.mark.parametrize(("n", "published"), [(37, (4, 2)), (29, (4, 4)), (8, (4, 2))])
def test_any_gpu_count_trains_the_same_images_for_100_iterations(n, published) -> None:
    """Issue: iteration i trains on the same (index, sample seed) pairs on 1, 2, 4 or 8 GPUs.

    n=37 and n=29 are not multiples of the published ranks x batch: the epochs are padded and
    end early, and 100 iterations cross many epoch boundaries; n=8 is one batch per epoch.
    """
    ranks, per_rank = published
    batch = ranks * per_rank
    reference = _iterations(n, ranks, batch, ranks, 100)  # the published layout itself
    for world in (1, 2, 4, 8):
        if batch % world == 0:
            assert _iterations(n, world, batch, ranks, 100) == reference, world
    # ... and the published layout is mmseg's own stream (4 ranks, DistributedSampler).
    mmseg = [_mmseg_batches(n, ranks, r, per_rank, 1, seed=9)[0] for r in range(ranks)]
    assert [i for i, _ in reference[0]] == [i for b in mmseg for i in b]


def test_sampler_refuses_a_protocol_that_does_not_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="protocol_ranks=3 does not divide the global batch 8"):
        InfiniteDistributedSampler(10, 0, 1, batch_size=8, protocol_ranks=3)
