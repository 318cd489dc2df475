"""Seeded, resumable, infinite distributed sampler yielding ``(index, per-sample seed)`` pairs.

§ numbers refer to docs/reference.md.

mmseg 0.x trains with a shuffling ``DistributedSampler`` (``drop_last=False``) inside a
``DataLoader(drop_last=True)``, wrapped by mmcv's ``IterLoader``, which starts a new epoch
(``set_epoch``) whenever the loader runs out (§3.5). This sampler produces the same stream without
the epoch bookkeeping in the loop:

* epoch ``e`` is a permutation of ``range(n)`` drawn from a generator seeded with ``seed + e``
  (exactly ``DistributedSampler``'s recipe), padded by repeating its head to a multiple of the world
  size and split round-robin: rank ``r`` takes positions ``r, r + W, r + 2W, ...``;
* the epoch ends with this rank's last *full* batch (``batch_size``): the ``ceil(n / W) %
  batch_size`` elements after it are skipped, as the loader's ``drop_last=True`` skips the short
  last batch. ADE20K: 20210 images over 4 ranks x 4 give 5053 per rank, 1263 batches, and one
  image per rank is not seen in that epoch (a different one each epoch);
* every element is ``(dataset index, sample seed)``; the sample seed is a pure function of
  ``(seed, epoch, position in the padded permutation)``, so the random augmentation of a sample
  does not depend on the number of data-loader workers or on where the run was resumed;
* ``start`` skips the first ``start`` elements of this rank's stream, so a run resumed at
  iteration ``k`` continues at element ``k * batch_size`` -- the same stream position the
  uninterrupted run had.

**Any GPU count, the same images** (docs/pipeline.md, "Protocol and layout"). The stream above is
that of the *published* layout (``protocol_ranks`` ranks of ``B / protocol_ranks`` images, e.g.
4 x 2). A run on ``world_size`` processes splits each iteration's global batch of ``B`` images --
published rank 0's images, then rank 1's, ... -- into ``world_size`` equal slices: one process
takes the union of what the four published ranks take, two processes take two ranks' worth
each. Iteration ``i`` therefore trains on the same ``(index, sample seed)`` pairs whatever the
GPU count, and with ``world_size == protocol_ranks`` every rank takes exactly its published
rank's stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for one sample, decorrelated across (seed, epoch, position) by SeedSequence."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class InfiniteDistributedSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, seed)`` stream for one rank; see the module docstring.

    Args:
        num_samples: dataset length ``n`` (> 0).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes of this run.
        seed: base seed (``cfg.schedule.seed``); epoch ``e`` shuffles with ``seed + e``.
        start: number of this rank's elements to skip (``iteration * batch_size`` on resume).
        batch_size: this rank's batch; ``world_size * batch_size`` is the global batch.
        protocol_ranks: ranks of the published layout whose stream is split (default:
            ``world_size``, i.e. this run's own layout); must divide the global batch. Each
            epoch yields only whole published batches (per-rank ``drop_last``).

    Raises:
        ValueError: an empty dataset, a rank outside the world, a negative ``start``, a
            ``protocol_ranks`` that does not divide the global batch, or fewer elements per
            published rank than one batch (the loader would yield nothing at all).
    """

    def __init__(
        self,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        start: int = 0,
        batch_size: int = 1,
        protocol_ranks: int | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(
                f"the training set is empty (num_samples={num_samples}); run `dnlrepro prepare` "
                "for this dataset or check data.data_root"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        global_batch = world_size * batch_size
        ranks = world_size if protocol_ranks is None else protocol_ranks
        if ranks < 1 or global_batch % ranks:
            raise ValueError(
                f"protocol_ranks={ranks} does not divide the global batch {global_batch}"
            )
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.start, self.batch_size = seed, start, batch_size
        self.protocol_ranks, self.protocol_batch = ranks, global_batch // ranks
        # Per published rank, DistributedSampler(drop_last=False): ceil(n / W) ...
        self.per_rank = per_rank = math.ceil(num_samples / ranks)
        self.total_size = per_rank * ranks
        # ... of which DataLoader(drop_last=True) uses the whole batches only.
        self.iters_per_epoch = per_rank // self.protocol_batch
        self.per_epoch = self.iters_per_epoch * batch_size  # this rank's elements per epoch
        if self.per_epoch == 0:
            raise ValueError(
                f"{num_samples} training images over {ranks} published rank(s) give "
                f"{per_rank} per rank, fewer than one batch of {self.protocol_batch} "
                "(data.samples_per_gpu): add images or lower data.samples_per_gpu"
            )

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch`` (whole batches only)."""
        return [idx for idx, _ in self._epoch_pairs(epoch)]

    def _epoch_pairs(self, epoch: int) -> list[tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        # Pad by repeating the head (as DistributedSampler does) so every rank gets equal work.
        padding = self.total_size - len(order)
        if padding > 0:
            order += (order * math.ceil(padding / len(order)))[:padding]
        w, b = self.protocol_ranks, self.protocol_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        positions = []
        for j in range(self.iters_per_epoch):
            # Published rank r's j-th batch holds its positions r + w * (j * b + k), k < b.
            global_batch = [r + w * (j * b + k) for r in range(w) for k in range(b)]
            positions += global_batch[lo:hi]
        return [(order[p], sample_seed(self.seed, epoch, p)) for p in positions]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            yield from self._epoch_pairs(epoch)[offset:]
            epoch += 1
            offset = 0

    def __len__(self) -> int:
        # Infinite; report one epoch so tools that call len() (e.g. tqdm) get a sane number.
        return self.per_epoch
