"""Late-interaction scoring: MeanMaxSim (Video-ColBERT) and ColBERT's MaxSim.

For a query with token mask m and a token set X with mask n (DESIGN.md section 2):

    MMS(q, X)    = (1 / sum_i m_i) * sum_i m_i * max_{j : n_j = 1} <q_i, x_j>
    MaxSim(q, X) =                   sum_i m_i * max_{j : n_j = 1} <q_i, x_j>

Rules shared by every function here:
- a padded token of X (n_j = 0) can never be the maximum, whatever its values (a padded
  vector with a huge dot product, inf or NaN included, is never read);
- a padded query token (m_i = 0) never counts: it is dropped before the matmul;
- if X has no valid token, the score is -inf (the max over an empty set), for every query;
- if a query has no valid token, its MMS/MaxSim is 0 against every non-empty token set (an
  empty sum; no division by zero).

`mean_max_sim` scores every query against every token set (Nq x Nv) in chunks, so that the
working memory is bounded by the chunk size and never grows with Nq x Nv x Lq x Lv: per chunk
one GEMM of the flattened query tokens [T, D] against the chunk's tokens [D, Lv * c], a max
over the Lv axis, then a weighted sum over each query's tokens. Padding costs nothing on the
big block: a padded token of X is replaced, before the GEMM, by a copy of a valid token of
the same set (a duplicate cannot change a max), and padded query tokens are dropped. The chunk's tokens are laid
out token-major (Lv x c) so the max reduces over a strided axis with c contiguous, which
vectorises well on CPU and GPU. With autograd on, the max keeps only argmax indices for the
backward pass (T x c integers), not the T x (Lv * c) similarity block.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import torch

logger = logging.getLogger(__name__)

INTERACTIONS = ("mms", "maxsim")

# Default bound on the number of elements of one similarity block (T query tokens x Lv * c
# video tokens): 2**25 floats = 128 MiB in float32. Large enough that the GEMM dominates the
# cost (the max and the weighted sum are memory-bound passes over the block), small enough for
# a laptop.
DEFAULT_CHUNK_ELEMENTS = 2 ** 25
# With automatic chunking we keep at least this many token sets per chunk (and chunk the
# queries instead) so that the GEMM stays wide.
_MIN_AUTO_V_CHUNK = 64


def _as_bool_mask(mask: torch.Tensor, shape, name: str) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    return mask != 0


def _query_weights(q_mask: torch.Tensor, interaction: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-token weights w (Nq x Lq): m_i / sum(m) for MMS, m_i for MaxSim."""
    w = q_mask.to(dtype)  # Nq x Lq
    if interaction == "mms":
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1)
    return w


def _check_inputs(q, q_mask, v, v_mask, interaction):
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of {INTERACTIONS}, got {interaction!r}")
    if q.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q and v must be 3-D (N x L x D), got {tuple(q.shape)} and {tuple(v.shape)}")
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(f"embedding sizes differ: q {q.shape[-1]} vs v {v.shape[-1]}")
    if q.dtype != v.dtype:
        raise ValueError(f"q and v must share a dtype, got {q.dtype} and {v.dtype}")
    if q.device != v.device:
        raise ValueError(f"q and v must be on the same device, got {q.device} and {v.device}")
    q_mask = _as_bool_mask(q_mask, q.shape[:2], "q_mask").to(q.device)
    v_mask = _as_bool_mask(v_mask, v.shape[:2], "v_mask").to(v.device)
    return q_mask, v_mask


def resolve_chunk_sizes(nq: int, lq: int, nv: int, lv: int, chunk_size: Optional[int],
                 q_chunk_size: Optional[int], max_elements: int):
    """Token sets per chunk (c) and queries per chunk, so that q_chunk * lq * c * lv <= max_elements
    whenever the sizes are chosen automatically."""
    for name, val in (("chunk_size", chunk_size), ("q_chunk_size", q_chunk_size)):
        if val is not None and int(val) < 1:
            raise ValueError(f"{name} must be >= 1, got {val}")
    per_pair = max(lq * lv, 1)
    if chunk_size is None:
        c = max_elements // (max(nq, 1) * per_pair)
        c = max(c, _MIN_AUTO_V_CHUNK)
    else:
        c = int(chunk_size)
    c = max(1, min(c, max(nv, 1)))
    if q_chunk_size is None:
        qc = max(1, max_elements // (per_pair * c))
    else:
        qc = int(q_chunk_size)
    qc = max(1, min(qc, max(nq, 1)))
    return c, qc


def mean_max_sim(q: torch.Tensor, q_mask: torch.Tensor, v: torch.Tensor, v_mask: torch.Tensor,
                 interaction: str = "mms", chunk_size: Optional[int] = None,
                 q_chunk_size: Optional[int] = None,
                 max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Score every query against every token set.

    Args:
        q: Nq x Lq x D query tokens (normally L2-normalised).
        q_mask: Nq x Lq, bool or 0/1; padded query tokens never count.
        v: Nv x Lv x D token sets (frames or video tokens).
        v_mask: Nv x Lv, bool or 0/1; padded tokens are never the maximum.
        interaction: "mms" (mean over valid query tokens) or "maxsim" (sum, ColBERT).
        chunk_size: token sets per chunk; default chosen from `max_chunk_elements`.
        q_chunk_size: queries per chunk; default chosen from `max_chunk_elements`.
        max_chunk_elements: bound on one similarity block (query tokens x chunk tokens) when
            the chunk sizes are automatic.

    Returns:
        Nq x Nv scores in q's dtype. Differentiable with respect to q and v.
    """
    q_mask, v_mask = _check_inputs(q, q_mask, v, v_mask, interaction)
    nq, lq, d = q.shape
    nv, lv, _ = v.shape
    if nq == 0 or nv == 0:
        return q.new_zeros(nq, nv)
    c, qc = resolve_chunk_sizes(nq, lq, nv, lv, chunk_size, q_chunk_size, max_chunk_elements)
    track_grad = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)

    w = _query_weights(q_mask, interaction, q.dtype)  # Nq x Lq
    q_all_valid = bool(q_mask.all())
    # Padded tokens are replaced by a copy of their set's first valid token: a duplicate cannot
    # change the max, so no -inf pass over the similarity block is needed (the GEMM output goes
    # straight to the max), and padded values (even NaN) are never read. Gradients of the copy
    # flow back to the valid token it duplicates, as they should.
    v_valid_any = v_mask.any(dim=1)  # Nv
    first_valid = v_mask.to(torch.uint8).argmax(dim=1)  # Nv, 0 when none is valid
    src = torch.where(v_mask, torch.arange(lv, device=v.device).unsqueeze(0), first_valid.unsqueeze(1))  # Nv x Lv
    flags = torch.stack([(~v_mask).any(dim=1), ~v_valid_any]).cpu()  # one host sync for the call
    has_pad, is_empty = flags[0], flags[1]  # Nv, Nv

    # Query chunks are prepared once (token compaction needs a host sync each).
    q_chunks = []
    for i in range(0, nq, qc):
        qi = q[i:i + qc]  # qc x Lq x D
        n_i = qi.shape[0]
        if q_all_valid:
            q_chunks.append((i, n_i, qi.reshape(n_i * lq, d), None))
        else:
            idx = q_mask[i:i + qc].reshape(-1).nonzero().squeeze(1)  # T
            q_chunks.append((i, n_i, qi.reshape(n_i * lq, d).index_select(0, idx), idx))

    out = None if track_grad else q.new_empty(nq, nv)
    blocks: List[List[torch.Tensor]] = [[] for _ in q_chunks]
    for j in range(0, nv, c):
        vj = v[j:j + c]  # c x Lv x D
        cj = vj.shape[0]
        if bool(has_pad[j:j + cj].any()):
            rows = (torch.arange(cj, device=v.device).unsqueeze(1) * lv + src[j:j + cj]).t().reshape(-1)  # (Lv c)
            vt = vj.reshape(cj * lv, d).index_select(0, rows)  # (Lv c) x D, token-major, padding replaced
        else:
            vt = vj.transpose(0, 1).reshape(lv * cj, d)  # (Lv c) x D, token-major
        empty = None
        if bool(is_empty[j:j + cj].any()):  # sets without any valid token score -inf
            empty = ~v_valid_any[j:j + cj]  # c
            vt = vt.masked_fill(empty.repeat(lv).unsqueeze(1), 0)  # keep garbage out of gradients
        for k, (i, n_i, toks, idx) in enumerate(q_chunks):
            sim = torch.mm(toks, vt.t()).view(toks.shape[0], lv, cj)  # T x Lv x c
            if track_grad:
                mx = sim.max(dim=1).values  # T x c; backward keeps only the argmax indices
            else:
                mx = sim.amax(dim=1)  # T x c
            del sim
            if idx is not None:
                mx = mx.new_zeros(n_i * lq, cj).index_copy(0, idx, mx)  # (qc Lq) x c, padded rows 0
            score = torch.bmm(w[i:i + n_i].unsqueeze(1), mx.view(n_i, lq, cj)).squeeze(1)  # qc x c
            if empty is not None:
                score = score.masked_fill(empty.unsqueeze(0), float("-inf"))
            if out is None:
                blocks[k].append(score)
            else:
                out[i:i + n_i, j:j + cj] = score
    if out is not None:
        return out
    return torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)


def mean_max_sim_pairwise(q: torch.Tensor, q_mask: torch.Tensor, v: torch.Tensor,
                          v_mask: torch.Tensor, interaction: str = "mms") -> torch.Tensor:
    """Score aligned pairs: query i against token set i only (N queries, N token sets -> N).

    Same rules as `mean_max_sim` (its diagonal), at O(N) rather than O(N^2) cost; useful for
    positives-only terms and for checking the full matrix.
    """
    q_mask, v_mask = _check_inputs(q, q_mask, v, v_mask, interaction)
    if q.shape[0] != v.shape[0]:
        raise ValueError(f"pairwise scoring needs as many queries as token sets, got {q.shape[0]} and {v.shape[0]}")
    w = _query_weights(q_mask, interaction, q.dtype)  # N x Lq
    q = q.masked_fill(~q_mask.unsqueeze(-1), 0)
    v = v.masked_fill(~v_mask.unsqueeze(-1), 0)
    sim = torch.bmm(q, v.transpose(1, 2))  # N x Lq x Lv
    sim = sim.masked_fill(~v_mask.unsqueeze(1), float("-inf"))
    mx = sim.max(dim=2).values  # N x Lq
    mx = mx.masked_fill(~q_mask, 0)  # padded query tokens: 0 (avoids 0 * -inf)
    return (w * mx).sum(dim=1).masked_fill(~v_mask.any(dim=1), float("-inf"))
