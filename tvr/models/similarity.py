"""Late-interaction scoring: MeanMaxSim (Video-ColBERT) and ColBERT's MaxSim.

For a query with token mask m and a token set X with mask n:

    MMS(q, X)    = (1 / sum_i m_i) * sum_i m_i * max_{j : n_j = 1} <q_i, x_j>
    MaxSim(q, X) =                   sum_i m_i * max_{j : n_j = 1} <q_i, x_j>

Rules shared by every function here:
- a padded token of X (n_j = 0) can never be the maximum, whatever its values (a padded
  vector with a huge dot product, inf or NaN included, is never read);
- a padded query token (m_i = 0) never counts: it is dropped before the matmul;
- if X has no valid token, the score is -inf (the max over an empty set), for every query;
- if a query has no valid token, its MMS/MaxSim is 0 against every non-empty token set (an
  empty sum; no division by zero).

How `mean_max_sim` stays at the cost of its matmul. It scores in blocks of queries x token
sets: one GEMM of the block's query tokens [T, D] against the chunk's tokens [D, Lv * c], one
max over the Lv axis, one small batched matmul with the query weights (the masked mean). The
GEMM dominates (D multiply-adds per similarity; the max reads each similarity once), provided
the max reads the block from cache and nothing is re-allocated per block:
- blocks are sized to a cache-sized element budget on the CPU (8 MiB of float32, inside a
  typical L3) and a larger one on CUDA, with query and video sides balanced so the GEMM stays
  square-ish;
- without autograd, the similarity block, the max and the score are written into buffers
  allocated once per call (`out=`), so no block pays fresh pages;
- the chunk's tokens are laid out token-major (Lv x c) so the max reduces over a strided axis
  with c contiguous; building that layout is the one copy per chunk, and it also replaces each
  padded token by a copy of a valid token of the same set (a duplicate cannot change a max), so
  no -inf pass over the block is needed and padded values are never read.
With autograd on, the max keeps only argmax indices for the backward pass (T x c integers), not
the T x (Lv * c) similarity block. Working memory is bounded by the block, never by Nq x Nv.
"""

from __future__ import annotations

import logging
import math
from typing import List, NamedTuple, Optional

import torch

logger = logging.getLogger(__name__)

INTERACTIONS = ("mms", "maxsim")

# Bound on one similarity block (query tokens x chunk tokens) when the chunk sizes are automatic.
# CPU: 2**21 float32 = 8 MiB, so the max over the block reads it from L3 right after the GEMM
# wrote it (a block far larger than the cache costs an extra trip to memory). CUDA: 2**25
# (128 MiB in float32), large enough that the GEMM runs at full width.
CPU_CHUNK_ELEMENTS = 2 ** 21
CUDA_CHUNK_ELEMENTS = 2 ** 25


# Automatic video chunks are a multiple of this: the max over a block reduces a strided axis with the
# c chunk videos contiguous, and on the CPU it runs about 8x faster when c is a multiple of 32 (c = 56:
# 8 % of the GEMM's time; c = 32 or 64: under 1 %).
_VIDEO_CHUNK_MULTIPLE = 32


def default_chunk_elements(device: torch.device) -> int:
    return CUDA_CHUNK_ELEMENTS if torch.device(device).type == "cuda" else CPU_CHUNK_ELEMENTS


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
    """Token sets per chunk (c) and queries per chunk (qc), so that qc * lq * c * lv <= max_elements
    whenever both sizes are automatic. Automatic sizes balance the block's two sides (about
    sqrt(max_elements) query tokens and as many chunk tokens) unless one side is short: then
    the other takes the rest of the budget. An automatic c is rounded down to a multiple of 32."""
    for name, val in (("chunk_size", chunk_size), ("q_chunk_size", q_chunk_size), ("max_elements", max_elements)):
        if val is not None and int(val) < 1:
            raise ValueError(f"{name} must be >= 1, got {val}")
    per_pair = max(lq * lv, 1)
    if chunk_size is None:
        if q_chunk_size is None:
            qc_guess = min(max(nq, 1), max(1, math.isqrt(max_elements) // max(lq, 1)))
        else:
            qc_guess = int(q_chunk_size)
        c = max(1, max_elements // (qc_guess * per_pair))
        if c >= _VIDEO_CHUNK_MULTIPLE and nv > c:
            c -= c % _VIDEO_CHUNK_MULTIPLE
    else:
        c = int(chunk_size)
    c = max(1, min(c, max(nv, 1)))
    if q_chunk_size is None:
        qc = max(1, max_elements // (per_pair * c))
    else:
        qc = int(q_chunk_size)
    qc = max(1, min(qc, max(nq, 1)))
    return c, qc


class _QueryChunk(NamedTuple):
    start: int  # first query of the chunk
    count: int  # queries in the chunk
    tokens: torch.Tensor  # T x D: the chunk's valid query tokens, query-major
    index: Optional[torch.Tensor]  # T positions in (count * Lq); None when every token is valid
    owner: Optional[torch.Tensor]  # T: the query (within the chunk) each token belongs to
    token_weights: Optional[torch.Tensor]  # T: each token's weight in its query's score


class _VideoChunk(NamedTuple):
    start: int
    count: int
    tokens: torch.Tensor  # (Lv c) x D, token-major, padded tokens replaced by valid ones
    empty: Optional[torch.Tensor]  # c bools (sets without any valid token), or None when there are none


def _query_chunks(q: torch.Tensor, q_mask: torch.Tensor, w: torch.Tensor, qc: int) -> List[_QueryChunk]:
    """Query chunks, prepared once per call (token compaction needs a host sync each)."""
    nq, lq, d = q.shape
    all_valid = bool(q_mask.all())
    chunks = []
    for i in range(0, nq, qc):
        n_i = q[i:i + qc].shape[0]
        qi = q[i:i + qc].reshape(n_i * lq, d)  # (n_i Lq) x D
        if all_valid:
            chunks.append(_QueryChunk(i, n_i, qi, None, None, None))
        else:
            idx = q_mask[i:i + qc].reshape(-1).nonzero().squeeze(1)  # T
            owner = torch.div(idx, lq, rounding_mode="floor")  # T
            token_weights = w[i:i + qc].reshape(-1).index_select(0, idx)  # T
            chunks.append(_QueryChunk(i, n_i, qi.index_select(0, idx), idx, owner, token_weights))
    return chunks


def _video_chunks(v: torch.Tensor, v_mask: torch.Tensor, c: int):
    """Yields each chunk of c token sets in the token-major layout the GEMM and the max want."""
    nv, lv, d = v.shape
    # Padded tokens are replaced by a copy of their set's first valid token: a duplicate cannot
    # change the max, so no -inf pass over the similarity block is needed, and padded values
    # (even NaN) are never read. Gradients of the copy flow back to the token it duplicates.
    valid_any = v_mask.any(dim=1)  # Nv
    first_valid = v_mask.to(torch.uint8).argmax(dim=1)  # Nv, 0 when none is valid
    src = torch.where(v_mask, torch.arange(lv, device=v.device).unsqueeze(0), first_valid.unsqueeze(1))  # Nv x Lv
    flags = torch.stack([(~v_mask).any(dim=1), ~valid_any]).cpu()  # one host sync for the call
    has_pad, is_empty = flags[0], flags[1]  # Nv, Nv
    for j in range(0, nv, c):
        vj = v[j:j + c]  # c x Lv x D
        cj = vj.shape[0]
        if bool(has_pad[j:j + cj].any()):
            rows = (torch.arange(cj, device=v.device).unsqueeze(1) * lv + src[j:j + cj]).t().reshape(-1)  # (Lv c)
            vt = vj.reshape(cj * lv, d).index_select(0, rows)  # (Lv c) x D
        else:
            vt = vj.transpose(0, 1).reshape(lv * cj, d)  # (Lv c) x D
        empty = None
        if bool(is_empty[j:j + cj].any()):  # sets without any valid token score -inf
            empty = ~valid_any[j:j + cj]  # c
            vt = vt.masked_fill(empty.repeat(lv).unsqueeze(1), 0)  # keep garbage out of gradients
        yield _VideoChunk(j, cj, vt, empty)


def mean_max_sim(q: torch.Tensor, q_mask: torch.Tensor, v: torch.Tensor, v_mask: torch.Tensor,
                 interaction: str = "mms", chunk_size: Optional[int] = None,
                 q_chunk_size: Optional[int] = None,
                 max_chunk_elements: Optional[int] = None,
                 add_to: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Score every query against every token set.

    Args:
        q: Nq x Lq x D query tokens (normally L2-normalised).
        q_mask: Nq x Lq, bool or 0/1; padded query tokens never count.
        v: Nv x Lv x D token sets (frames or video tokens).
        v_mask: Nv x Lv, bool or 0/1; padded tokens are never the maximum.
        interaction: "mms" (mean over valid query tokens) or "maxsim" (sum, ColBERT).
        chunk_size: token sets per chunk; default chosen from `max_chunk_elements`.
        q_chunk_size: queries per chunk; default chosen from `max_chunk_elements`.
        max_chunk_elements: bound on one similarity block (query tokens x chunk tokens) for the
            automatic sizes; default `default_chunk_elements(q.device)`.
        add_to: optional Nq x Nv scores (q's dtype and device) to add these scores to, so that
            branches sum without another Nq x Nv matrix: without autograd it is updated in place
            and returned; with autograd the sum is a new tensor.

    Returns:
        Nq x Nv scores in q's dtype (plus `add_to`). Differentiable with respect to q and v; without
        autograd (torch.no_grad, or inputs that need no gradient) a buffer-reusing path runs instead.
    """
    q_mask, v_mask = _check_inputs(q, q_mask, v, v_mask, interaction)
    nq, lq, d = q.shape
    nv, lv, _ = v.shape
    if add_to is not None and (tuple(add_to.shape) != (nq, nv) or add_to.dtype != q.dtype or add_to.device != q.device):
        raise ValueError(f"add_to must be a {nq} x {nv} {q.dtype} tensor on {q.device}, got "
                         f"{tuple(add_to.shape)} {add_to.dtype} on {add_to.device}")
    if nq == 0 or nv == 0:
        return q.new_zeros(nq, nv) if add_to is None else add_to
    if max_chunk_elements is None:
        max_chunk_elements = default_chunk_elements(q.device)
    c, qc = resolve_chunk_sizes(nq, lq, nv, lv, chunk_size, q_chunk_size, max_chunk_elements)
    w = _query_weights(q_mask, interaction, q.dtype)  # Nq x Lq
    q_chunks = _query_chunks(q, q_mask, w, qc)
    v_chunks = _video_chunks(v, v_mask, c)
    if torch.is_grad_enabled() and (q.requires_grad or v.requires_grad):
        scores = _scores_autograd(q_chunks, v_chunks, w, lq, lv)
        return scores if add_to is None else add_to + scores
    return _scores_no_grad(q_chunks, v_chunks, w, nq, nv, lq, lv, c, add_to)


def _scores_autograd(q_chunks, v_chunks, w, lq, lv) -> torch.Tensor:
    """Blocks kept as autograd graph nodes; the max keeps only its argmax indices."""
    blocks: List[List[torch.Tensor]] = [[] for _ in q_chunks]
    for vc in v_chunks:
        for k, qch in enumerate(q_chunks):
            sim = torch.mm(qch.tokens, vc.tokens.t()).view(-1, lv, vc.count)  # T x Lv x c
            mx = sim.max(dim=1).values  # T x c
            del sim
            if qch.index is not None:
                mx = mx.new_zeros(qch.count * lq, vc.count).index_copy(0, qch.index, mx)  # (qc Lq) x c, padded rows 0
            wq = w[qch.start:qch.start + qch.count].unsqueeze(1)  # qc x 1 x Lq
            score = torch.bmm(wq, mx.view(qch.count, lq, vc.count)).squeeze(1)  # qc x c
            if vc.empty is not None:
                score = score.masked_fill(vc.empty.unsqueeze(0), float("-inf"))
            blocks[k].append(score)
    return torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)


@torch.no_grad()
def _scores_no_grad(q_chunks, v_chunks, w, nq, nv, lq, lv, c, add_to=None) -> torch.Tensor:
    """The evaluation path: every block is written into buffers allocated once (flat memory, no
    fresh pages per block); the max is one pass, the weighted mean one small matmul."""
    ref = q_chunks[0].tokens
    max_tokens = max(qch.tokens.shape[0] for qch in q_chunks)
    max_queries = max(qch.count for qch in q_chunks)
    sim_buf = ref.new_empty(max_tokens * lv * c)  # one similarity block
    mx_buf = ref.new_empty(max_tokens * c)  # its max over each set's tokens
    score_buf = ref.new_empty(max_queries * c)
    compacted = any(qch.index is not None for qch in q_chunks)
    weight_buf = ref.new_empty(max_queries * max_tokens) if compacted else None
    out = ref.new_empty(nq, nv) if add_to is None else add_to
    for vc in v_chunks:
        cj = vc.count
        for qch in q_chunks:
            t, n_i = qch.tokens.shape[0], qch.count
            sim = sim_buf[:t * lv * cj].view(t, lv * cj)  # T x (Lv c)
            torch.mm(qch.tokens, vc.tokens.t(), out=sim)
            mx = mx_buf[:t * cj].view(t, cj)  # T x c
            torch.amax(sim.view(t, lv, cj), dim=1, out=mx)
            score = score_buf[:n_i * cj].view(n_i, cj)  # qc x c
            if qch.index is None:  # every query has Lq tokens: a batched weighted sum
                torch.bmm(w[qch.start:qch.start + n_i].unsqueeze(1), mx.view(n_i, lq, cj), out=score.unsqueeze(1))
            else:  # compacted tokens: a (qc x T) matrix of token weights, one row per query
                weights = weight_buf[:n_i * t].view(n_i, t).zero_()
                weights[qch.owner, torch.arange(t, device=weights.device)] = qch.token_weights
                torch.mm(weights, mx, out=score)
            if vc.empty is not None:
                score.masked_fill_(vc.empty.unsqueeze(0), float("-inf"))
            if add_to is None:
                out[qch.start:qch.start + n_i, vc.start:vc.start + cj] = score
            else:
                out[qch.start:qch.start + n_i, vc.start:vc.start + cj] += score
    return out


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
