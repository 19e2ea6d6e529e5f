"""torch.distributed helpers: rank queries and all-gathers (with and without gradient).

Every function is a no-op (or returns the single-process answer) when torch.distributed is not
initialised or the world has one process, so library code can call them unconditionally.

Gradient through the gather (`all_gather_with_grad`). Training scores each rank's b local rows
against the B = sum of all ranks' rows gathered from every rank, and each rank's loss is a mean
over its LOCAL rows (tvr.models.losses). Let L_r be rank r's loss and x_k rank k's features.
x_k enters every L_r as columns of the gathered matrix. The backward of the gather therefore
SUMS the incoming gradients over ranks (an all-reduce of dL_r / d gathered) and hands rank k its
own slice, sum_r dL_r / dx_k. Rank k's parameter gradient is then the part of
d(sum_r L_r)/d theta that flows through its own data; DDP averages these over W ranks, giving
(1/W) * d(sum_r L_r)/d theta = d L_global / d theta, with L_global = (1/W) sum_r L_r the
mean over all B rows: exactly the one-process gradient on the global batch.
(Returning only the local slice without the all-reduce, as some codebases do, drops the
gradient that other ranks' rows send to this rank's columns.)

Shards may have different sizes along dim 0 (the sizes are exchanged first); all other
dimensions must agree across ranks.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist



def is_distributed() -> bool:
    """True when a default process group exists (whatever its size)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def gather_sizes(n: int, device: Optional[torch.device] = None, group=None) -> List[int]:
    """Every rank's local size n, in rank order (one small all-gather)."""
    world = dist.get_world_size(group) if is_distributed() else 1
    if world == 1:
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t, group=group)
    return [int(s.item()) for s in out]


def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x with zero rows appended up to n rows (collectives need equal shapes on every rank)."""
    if x.shape[0] == n:
        return x
    return torch.cat([x, x.new_zeros((n - x.shape[0],) + tuple(x.shape[1:]))], dim=0)


def _gather(x: torch.Tensor, group=None):
    """Concatenate every rank's x along dim 0; returns (gathered, sizes)."""
    world = dist.get_world_size(group)
    x = x.contiguous()
    sizes = gather_sizes(x.shape[0], x.device, group)
    x = _pad_rows(x, max(sizes))
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0), sizes


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: all-reduce (sum) the gradient of the gathered
    tensor, return this rank's slice (see the module docstring for why)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group):
        gathered, sizes = _gather(x, group)
        rank = dist.get_rank(group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.size = sizes[rank]
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start:ctx.start + ctx.size], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate every rank's x along dim 0 (rank order), differentiably: the gradient that
    any rank's loss sends to this rank's rows is summed back here. Identity for one process.
    This rank's rows start at sum of the sizes of lower ranks (rank * b with equal shards)."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate every rank's x along dim 0 (rank order), without gradient (evaluation).
    Returns x detached for one process."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x.detach()
    return _gather(x.detach(), group)[0]


@torch.no_grad()
def gather_to_rank(x: torch.Tensor, dst: int = 0, group=None) -> Optional[torch.Tensor]:
    """Like all_gather_no_grad, but only rank ``dst`` receives the result (others get None): for a
    large result only one rank needs, such as the evaluation similarity matrix."""
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x.detach()
    x = x.detach().contiguous()
    sizes = gather_sizes(x.shape[0], x.device, group)
    x = _pad_rows(x, max(sizes))
    parts = [torch.empty_like(x) for _ in sizes] if dist.get_rank(group) == dst else None
    dist.gather(x, parts, dst=dst, group=group)
    if parts is None:
        return None
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)
