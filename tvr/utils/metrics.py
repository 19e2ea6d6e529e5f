"""Retrieval metrics: recall at K, median and mean rank, multi-sentence variants, dual softmax.

Conventions:

* Rows of a similarity matrix are queries, columns are candidates; a higher score is better.
* Ranks are 1-based.
* **Ties count at the worst rank.**  The rank of a ground-truth (GT) candidate with score ``g`` is
  ``1 + #{other candidates with score >= g}``.  A row whose scores are all equal therefore gets
  rank ``M`` (the number of columns), not 1.  DRL's ``compute_metrics`` counts a tie as a hit,
  which rewards degenerate models (e.g. a collapsed encoder scoring everything 0 gets R@1 = 100).
* **NaN scores count as the worst possible score** (they are treated as ``-inf``, and ties at
  ``-inf`` again count at the worst rank): a NaN GT score gets rank ``M``; a NaN distractor never
  outranks anything.
* Recall values are percentages (0..100); ``MR``/``MedianR``/``MdR`` are the median rank (numpy's
  median, so the mean of the two middle ranks for an even count, as in DRL); ``MeanR``/``MnR`` the
  mean rank.

Everything is vectorised with torch and processed in row chunks, so a 10k x 10k matrix takes
well under a second on a CPU and never needs more than one chunk of temporary booleans.  A CUDA
tensor is processed on its own device.
"""

from __future__ import annotations

import logging
from typing import Dict, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "compute_metrics",
    "t2v_metrics",
    "v2t_metrics",
    "t2v_ranks",
    "v2t_ranks",
    "metrics_from_ranks",
    "dual_softmax_rerank",
    "format_metrics",
]

# About 16M booleans (16 MiB) of temporary comparisons per chunk.
_CHUNK_ELEMENTS = 1 << 24


def _as_float_tensor(sim: ArrayLike) -> torch.Tensor:
    """A 2-D floating tensor view/copy of ``sim`` (numpy or torch), no autograd."""
    if isinstance(sim, np.ndarray):
        sim = torch.from_numpy(sim)
    elif not isinstance(sim, torch.Tensor):
        sim = torch.as_tensor(np.asarray(sim))
    sim = sim.detach()
    if sim.dim() != 2:
        raise ValueError(f"similarity matrix must be 2-D (queries x candidates), got shape {tuple(sim.shape)}")
    if not torch.is_floating_point(sim):
        sim = sim.double() if sim.dtype == torch.int64 else sim.float()
    elif sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()  # exact upcast; half comparisons are slow or missing on some CPUs
    return sim


def _nan_to_neg_inf(x: torch.Tensor) -> torch.Tensor:
    nan = torch.isnan(x)
    if not bool(nan.any()):  # the common case; avoids a full copy
        return x
    return x.masked_fill(nan, float("-inf"))


def _as_index(query_to_video, num_queries: int, num_videos: int, device) -> torch.Tensor:
    q2v = torch.as_tensor(np.asarray(query_to_video) if not isinstance(query_to_video, torch.Tensor)
                          else query_to_video).long().reshape(-1).to(device)
    if q2v.numel() != num_queries:
        raise ValueError(f"query_to_video has {q2v.numel()} entries but the similarity matrix has "
                         f"{num_queries} query rows")
    if num_queries and (int(q2v.min()) < 0 or int(q2v.max()) >= num_videos):
        raise ValueError(f"query_to_video values must lie in [0, {num_videos}) (number of columns), got "
                         f"range [{int(q2v.min())}, {int(q2v.max())}]")
    return q2v


def _row_chunk(num_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, num_cols))


def t2v_ranks(sim: ArrayLike, query_to_video) -> torch.Tensor:
    """1-based rank of each query's GT column, ties and NaN at the worst rank.

    sim: Nq x Nv; query_to_video: Nq ints, GT column of each row.  Returns a LongTensor[Nq] (CPU).
    rank[q] = 1 + #{v != gt(q) : sim[q, v] >= sim[q, gt(q)]}, NaN read as -inf.
    """
    sim = _as_float_tensor(sim)
    nq, nv = sim.shape
    q2v = _as_index(query_to_video, nq, nv, sim.device)
    ranks = torch.empty(nq, dtype=torch.long, device=sim.device)
    step = _row_chunk(nv)
    for start in range(0, nq, step):
        block = _nan_to_neg_inf(sim[start:start + step])  # b x Nv
        rows = torch.arange(block.shape[0], device=sim.device)
        gt = block[rows, q2v[start:start + step]]  # b
        # The GT column always satisfies gt >= gt (also at -inf), so the count is already 1 + others.
        ranks[start:start + step] = torch.count_nonzero(block >= gt[:, None], dim=1)
    return ranks.cpu()


def v2t_ranks(sim: ArrayLike, query_to_video) -> torch.Tensor:
    """Video-to-text rank of each video's BEST caption among all captions, ties worst.

    sim: Nq x Nv with rows = captions (the text-to-video matrix, NOT transposed);
    query_to_video[q] = the video caption q describes.  For video v with captions G(v) and best GT
    score b(v) = max_{q in G(v)} sim[q, v] (NaN read as -inf):
        rank[v] = 1 + #{q not in G(v) : sim[q, v] >= b(v)}.
    The other correct captions never count against a video (retrieving any of them is a hit), as in
    image-to-text retrieval on COCO/Flickr.  Note this differs from CLIP4Clip's multi-sentence v2t,
    which first max-pools each video's captions into one row and ranks the Nv pooled rows.
    Videos with no caption cannot be scored; they get rank 0 in the returned LongTensor[Nv] (CPU)
    and are skipped by :func:`v2t_metrics`.
    """
    sim = _as_float_tensor(sim)
    nq, nv = sim.shape
    q2v = _as_index(query_to_video, nq, nv, sim.device)
    dev = sim.device
    step = _row_chunk(nv)

    # Pass 1: GT score of every caption, best GT score of every video.
    gt_scores = torch.empty(nq, dtype=sim.dtype, device=dev)
    for start in range(0, nq, step):
        block = _nan_to_neg_inf(sim[start:start + step])
        rows = torch.arange(block.shape[0], device=dev)
        gt_scores[start:start + step] = block[rows, q2v[start:start + step]]
    best = torch.full((nv,), float("-inf"), dtype=sim.dtype, device=dev)
    best.scatter_reduce_(0, q2v, gt_scores, reduce="amax", include_self=True)  # Nv

    # Pass 2: captions (correct or not) scoring >= the best GT score, per video column.
    count_all = torch.zeros(nv, dtype=torch.long, device=dev)
    for start in range(0, nq, step):
        block = _nan_to_neg_inf(sim[start:start + step])  # b x Nv
        count_all += torch.count_nonzero(block >= best[None, :], dim=0)
    # Correct captions at or above the best GT score (at least the best one itself).
    count_gt = torch.zeros(nv, dtype=torch.long, device=dev)
    count_gt.scatter_add_(0, q2v, (gt_scores >= best[q2v]).long())

    has_caption = torch.bincount(q2v, minlength=nv) > 0
    ranks = torch.where(has_caption, 1 + count_all - count_gt, torch.zeros_like(count_all))
    return ranks.cpu()


def metrics_from_ranks(ranks: ArrayLike) -> Dict[str, float]:
    """R1/R5/R10 (percent), MR=MedianR=MdR (median rank), MeanR=MnR (mean rank) of 1-based ranks."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no ranks to summarise (empty similarity matrix?)")
    median = float(np.median(r))
    mean = float(np.mean(r))
    return {
        "R1": float(np.mean(r <= 1) * 100.0),
        "R5": float(np.mean(r <= 5) * 100.0),
        "R10": float(np.mean(r <= 10) * 100.0),
        "MR": median,
        "MedianR": median,
        "MeanR": mean,
        # The names eval_results.json uses.
        "MdR": median,
        "MnR": mean,
    }


def compute_metrics(sim: ArrayLike) -> Dict[str, float]:
    """Metrics of an N x M similarity matrix (N <= M) with the GT of row i in column i.

    Same keys as DRL's compute_metrics (R1, R5, R10, MR, MedianR, MeanR) plus the aliases MdR and
    MnR, but ties count at the worst rank and NaN as the worst score (see the module docstring).
    For video-to-text on 1:1 data call ``compute_metrics(sim.T)``.
    """
    sim_t = _as_float_tensor(sim)
    n, m = sim_t.shape
    if n > m:
        raise ValueError(f"compute_metrics needs N <= M (GT on the diagonal), got {n} x {m}")
    return metrics_from_ranks(t2v_ranks(sim_t, torch.arange(n)))


def t2v_metrics(sim: ArrayLike, query_to_video) -> Dict[str, float]:
    """Text-to-video metrics; sim Nq x Nv, the GT column of row q is query_to_video[q].

    Every caption is its own query.  With query_to_video = arange(N) this equals compute_metrics(sim).
    """
    return metrics_from_ranks(t2v_ranks(sim, query_to_video))


def v2t_metrics(sim: ArrayLike, query_to_video) -> Dict[str, float]:
    """Video-to-text metrics from the Nq x Nv text-to-video matrix: each video's best caption counts.

    See :func:`v2t_ranks`.  Videos without any caption are skipped (logged).  With
    query_to_video = arange(N) on a square matrix this equals compute_metrics(sim.T).
    """
    ranks = v2t_ranks(sim, query_to_video)
    valid = ranks > 0
    skipped = int((~valid).sum())
    if skipped:
        logger.warning("v2t metrics: %d of %d videos have no caption and are not scored", skipped, ranks.numel())
    return metrics_from_ranks(ranks[valid])


def dual_softmax_rerank(sim: ArrayLike, temperature: float = 0.01, dim: int = 0) -> ArrayLike:
    """Dual-softmax (DSL) inference re-ranking of CAMoE (Cheng et al., 2021), DRL's ``--dsl``.

        out = sim * softmax(sim / temperature, dim=dim) * sim.shape[dim]

    ``sim`` is the Nq x Nv text-to-video matrix.  ``dim=0`` (text-to-video): the prior normalises
    each video's column over all texts, so a "hub" video that scores highly for many texts is
    damped before each text's row is ranked.  ``dim=1`` (video-to-text): the prior normalises each
    text's row over all videos; pass the result, still Nq x Nv, to :func:`v2t_metrics`.  (This
    equals re-ranking the transposed matrix with dim=0, as DRL-style code does with ``sim.T``.)
    ``temperature`` divides the scores (0.01 = CLIP's logit scale 100; our scores are sums of
    cosine similarities, so a temperature of 1 would make the prior nearly uniform).  The factor
    ``sim.shape[dim]`` only keeps magnitudes comparable to ``sim``; it never changes a ranking.
    A column (row for dim=1) that is entirely -inf or NaN becomes NaN, which the metrics here count
    as the worst score.  DSL uses the whole query set, so results are transductive and not
    comparable with plain retrieval numbers.
    Returns the same type as given (numpy array or tensor); float32, or float64 when given float64.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if dim not in (0, 1, -1, -2):
        raise ValueError(f"dim must be 0 or 1, got {dim}")
    dim = dim % 2
    was_numpy = isinstance(sim, np.ndarray)
    s = _as_float_tensor(sim)  # Nq x Nv
    if dim == 1:
        s = s.t()  # softmax over videos == column softmax of the transpose
    n, m = s.shape
    out = torch.empty_like(s)
    step = _row_chunk(n)  # columns per chunk: the softmax runs over whole columns
    for start in range(0, m, step):
        cols = s[:, start:start + step]
        prior = torch.softmax(cols / temperature, dim=0)
        out[:, start:start + step] = cols * prior * n
    if dim == 1:
        out = out.t().contiguous()
    return out.cpu().numpy() if was_numpy else out


_DISPLAY = (("R1", "R@1", "{:.1f}"), ("R5", "R@5", "{:.1f}"), ("R10", "R@10", "{:.1f}"),
            ("MR", "MdR", "{:.1f}"), ("MeanR", "MnR", "{:.1f}"))


def format_metrics(name: str, metrics: Dict[str, float]) -> str:
    """One log line, e.g. ``t2v: R@1 45.2 | R@5 72.0 | R@10 81.3 | MdR 2.0 | MnR 14.3``."""
    parts = [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _DISPLAY if key in metrics]
    return f"{name}: " + " | ".join(parts)
