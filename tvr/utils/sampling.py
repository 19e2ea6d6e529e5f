"""Index sampling across ranks: a resumable training batch sampler and evaluation shards.

Why not torch's DistributedSampler: training must restart in the middle of an epoch with the same
batches (``--resume``), and evaluation must give each rank a contiguous, duplicate-free slice so
the gathered similarity rows come back in dataset order.
"""
from typing import Iterator, List

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[List[int]]):
    """Yields this rank's share of each global batch of a seeded per-epoch permutation.

    Global batch k is ``perm[k*G:(k+1)*G]`` (G = global batch size); rank r takes the r-th
    contiguous slice of it, so the union over ranks is exactly the one-process batch. The last
    incomplete global batch is dropped, as every rank needs the same number of rows.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError(
                f"--batch_size {global_batch} does not divide across {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        if num_samples < global_batch:
            raise ValueError(f"the training set has {num_samples} pairs, fewer than one batch of --batch_size {global_batch}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and skip the first ``start_step`` batches (resume)."""
        self.epoch = epoch
        self.start_step = start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[List[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=generator).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            start = step * self.global_batch + self.rank * self.local_batch
            yield perm[start : start + self.local_batch]


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """Contiguous slice of ``range(num_items)`` for this rank; sizes differ by at most one."""
    per_rank, extra = divmod(num_items, world_size)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (1 if rank < extra else 0))
