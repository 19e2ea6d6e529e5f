"""Approximate multi-vector search over video tokens: IVF centroids with product-quantised
residuals for candidate generation, exact MeanMaxSim on the stored tokens for the final order.

Every real video token (frame and video tokens alike) is assigned to its nearest coarse centroid
and its residual to that centroid is coded by a faiss product quantiser (`pq_m` bytes per token).
Fine centroids make the centroid estimates and the probing sharp, but flat k-means and exhaustive
assignment cost tokens x centroids: from `TWO_LEVEL_FROM` centroids on, they are trained in two
levels (k-means into about sqrt(nlist) groups, then k-means inside each group) and a token is
assigned to the nearest centroid of its `ASSIGN_PROBE` nearest groups.

Per video we keep its tokens' centroid ids and PQ codes in fixed slots (frame tokens, then video
tokens), and an inverted list from each centroid to the videos with a token there. A query is
answered in four stages, each keeping the best of the previous one:

1. every valid query token probes its `nprobe` nearest centroids; the videos in those lists are
   the candidates, estimated from the probed lists alone (a query token that did not reach a
   video counts the similarity of its first unprobed centroid, an upper bound);
2. `centroid_candidates` of them are scored with every token replaced by its centroid;
3. `pq_candidates` of those are scored on centroid + PQ residual (lookup tables, no decompression);
4. `rerank` of those are scored exactly with `mean_max_sim` on the stored tokens.
The returned scores are therefore the exhaustive scores; only the candidate set is approximate.
Stage sizes trade recall for latency: bench/bench_search.py measures both. Stages 2-4 work in
chunks of candidates small enough for the CPU cache; that, more than the arithmetic, sets their speed.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.similarity import mean_max_sim
from .ann_config import AnnBuildConfig, AnnSearchConfig  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


class TokenBatch(NamedTuple):
    tokens: torch.Tensor  # N x L x D float32
    mask: torch.Tensor  # N x L bool


# fetch(vids) -> one TokenBatch per branch, rows in the order of vids
FetchFn = Callable[[np.ndarray], List[TokenBatch]]
# prefetch(vids): start reading what fetch will ask for (all re-rank candidates at once)
PrefetchFn = Callable[[np.ndarray], None]


class SearchResult(NamedTuple):
    vids: np.ndarray  # K video ids, best first
    scores: np.ndarray  # K exact totals (sum over branches)
    branch_scores: np.ndarray  # K x B exact per-branch scores
    num_candidates: int  # videos reached by the probed lists (stage 1)


# Candidates per chunk: stages 2 and 3 keep one chunk's similarities (256 videos of 26 tokens x 32
# query tokens: under 1 MB) in the CPU cache, 10x faster than one pass over 8k candidates; the exact
# re-rank's small buffers are reused instead of page-faulted in.
CHUNK_VIDEOS = 256
EXACT_CHUNK = 64
TWO_LEVEL_FROM = 2048  # centroids from which k-means and assignment go through groups
ASSIGN_PROBE = 8  # groups searched for a token's nearest centroid


def default_nlist(num_tokens: int) -> int:
    """A power of two near 8 * sqrt(tokens), between 16 and 65536 (16,384 for 100k videos of 26 tokens)."""
    target = 8.0 * math.sqrt(max(num_tokens, 1))
    return int(min(65536, max(16, 2 ** round(math.log2(target)))))


def training_tokens(cfg: AnnBuildConfig, total_tokens: int) -> int:
    """Tokens to sample for training: cfg.train_tokens, or 16 per centroid and at least 131,072."""
    if cfg.train_tokens:
        return cfg.train_tokens
    return max(131_072, 16 * (cfg.nlist or default_nlist(total_tokens)))


def _faiss():
    import faiss  # lazy: only the ANN index needs it

    return faiss


class Quantizer:
    """Centroids (nlist x D) and a residual product quantiser (codebook m x ksub x dsub).

    With two-level training also the group centroids (G x D) and each centroid's group (nlist),
    which make assignment cost G + ASSIGN_PROBE * nlist / G distances per token instead of nlist.
    """

    def __init__(self, centroids: np.ndarray, codebook: np.ndarray, group_centroids: Optional[np.ndarray] = None,
                 group_of: Optional[np.ndarray] = None):
        self.centroids = np.array(centroids, dtype=np.float32)  # own, writable copies (maybe read from a memmap)
        self.codebook = np.array(codebook, dtype=np.float32)
        self.nlist, self.dim = self.centroids.shape
        self.m, self.ksub, self.dsub = self.codebook.shape
        if self.m * self.dsub != self.dim:
            raise ValueError(f"codebook {self.codebook.shape} does not fit centroids of size {self.dim}")
        if (group_centroids is None) != (group_of is None):
            raise ValueError("group centroids and the centroids' groups come together")
        self.group_centroids = None if group_centroids is None else np.array(group_centroids, dtype=np.float32)
        self.group_of = None if group_of is None else np.array(group_of, dtype=np.int64)
        if self.group_of is not None and (self.group_of.shape != (self.nlist,) or self.group_of.min() < 0
                                          or self.group_of.max() >= len(self.group_centroids)):
            raise ValueError(f"centroid groups {self.group_of.shape} do not fit {self.nlist} centroids "
                             f"in {len(self.group_centroids)} groups")
        self._coarse = None
        self._centroids_t = torch.from_numpy(self.centroids)
        self._codebook_t = torch.from_numpy(self.codebook)

    ARRAYS = ("centroids", "codebook", "group_centroids", "group_of")  # the groups only with two levels

    def arrays(self) -> dict:
        """What to store to rebuild this quantiser: Quantizer.from_arrays(arrays)."""
        out = {"centroids": self.centroids, "codebook": self.codebook}
        if self.group_of is not None:
            out.update(group_centroids=self.group_centroids, group_of=self.group_of)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Quantizer":
        """From a mapping with `arrays()`'s names (a safetensors shard view, an npz file, a dict)."""
        return cls(**{name: np.asarray(arrays[name]) for name in cls.ARRAYS if name in arrays})

    def _assigner(self):
        """faiss index whose nearest neighbour of a token is its centroid id (exact, or through groups)."""
        faiss = _faiss()
        if self.group_of is None:
            index = faiss.IndexFlatL2(self.dim)
            index.add(self.centroids)
            return index
        groups = faiss.IndexFlatL2(self.dim)
        groups.add(self.group_centroids)
        index = faiss.IndexIVFFlat(groups, self.dim, len(self.group_centroids), faiss.METRIC_L2)  # keeps `groups` alive
        for g in range(len(self.group_centroids)):
            ids = np.nonzero(self.group_of == g)[0].astype(np.int64)
            if len(ids):
                vectors = np.ascontiguousarray(self.centroids[ids])
                index.invlists.add_entries(g, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(vectors.view(np.uint8)))
        index.ntotal = self.nlist
        index.nprobe = min(ASSIGN_PROBE, len(self.group_centroids))
        return index

    def assign(self, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """n x D -> n nearest centroid ids (int32); with groups, the nearest of the ASSIGN_PROBE nearest groups."""
        if self._coarse is None:
            self._coarse = self._assigner()
        out = np.empty(len(x), np.int32)
        for a in range(0, len(x), chunk):
            part = np.ascontiguousarray(x[a:a + chunk], dtype=np.float32)
            out[a:a + chunk] = self._coarse.search(part, 1)[1][:, 0]
        return out

    def encode(self, x: np.ndarray, lists: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """PQ codes (n x m uint8) of the residuals x - centroid: nearest codeword per sub-vector.

        The same rule as faiss's ProductQuantizer.compute_codes, written as batched matrix
        products so it runs at GEMM speed.
        """
        out = np.empty((len(x), self.m), np.uint8)
        half_norms = 0.5 * (self._codebook_t ** 2).sum(-1)  # m x ksub
        for a in range(0, len(x), chunk):
            residual = torch.from_numpy(np.asarray(x[a:a + chunk], dtype=np.float32)) - self._centroids_t[torch.from_numpy(lists[a:a + chunk]).long()]
            sub = residual.view(-1, self.m, self.dsub).transpose(0, 1)  # m x n x dsub
            score = torch.bmm(sub, self._codebook_t.transpose(1, 2)) - half_norms[:, None, :]  # m x n x ksub
            out[a:a + chunk] = score.argmax(-1).t().numpy().astype(np.uint8)
        return out

    def decode(self, lists: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """lists: N (int64, >= 0), codes: N x m (uint8) -> N x D reconstructed tokens."""
        offsets = torch.arange(self.m) * self.ksub  # m
        flat = self._codebook_t.view(self.m * self.ksub, self.dsub)
        parts = flat.index_select(0, (codes.long() + offsets).view(-1))  # (N m) x dsub
        return self._centroids_t.index_select(0, lists) + parts.view(len(lists), self.dim)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int) -> np.ndarray:
    kmeans = _faiss().Kmeans(x.shape[1], k, niter=niter, seed=seed, min_points_per_centroid=1,
                             max_points_per_centroid=max_points_per_centroid)
    kmeans.train(np.ascontiguousarray(x))
    return kmeans.centroids


def _shares(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` centroids over groups of `sizes` points: in proportion, at least one per
    non-empty group, none for an empty one, summing to exactly `total` (when there are enough groups
    with points; never more than `total`)."""
    share = np.maximum(1, np.floor(sizes / sizes.sum() * total)).astype(np.int64)
    share[sizes == 0] = 0
    while share.sum() > total:  # the minimum of one per group overshot: take from the largest shares
        share[np.argmax(share)] -= 1
    for _ in range(int(total - share.sum())):  # the rounding left some: most points per centroid first
        share[np.argmax(sizes / np.maximum(share, 1))] += 1
    return share


def _two_level_kmeans(x: np.ndarray, nlist: int, cfg: AnnBuildConfig):
    """Groups by k-means, then each group's share of the nlist centroids by k-means on its points.

    Returns (centroids nlist' x D, group_centroids G x D, group_of nlist'); nlist' <= nlist when
    a group has fewer points than its share.
    """
    num_groups = int(2 ** round(math.log2(math.sqrt(nlist))))
    group_centroids = _kmeans(x, num_groups, cfg.kmeans_iters, cfg.seed, max_points_per_centroid=256)
    groups = _faiss().IndexFlatL2(x.shape[1])
    groups.add(group_centroids)
    member = groups.search(x, 1)[1][:, 0]
    share = _shares(np.bincount(member, minlength=num_groups), nlist)
    centroids, group_of = [], []
    for g in range(num_groups):
        points = x[member == g]
        k = int(min(share[g], len(points)))
        if k == 0:
            continue
        fine = points[:1] if k == 1 and len(points) == 1 else _kmeans(points, k, cfg.kmeans_iters, cfg.seed + 1 + g,
                                                                       max_points_per_centroid=len(points))
        centroids.append(fine)
        group_of.append(np.full(k, g))
    return np.concatenate(centroids), group_centroids, np.concatenate(group_of)


def train_quantizer(sample: np.ndarray, cfg: AnnBuildConfig, total_tokens: Optional[int] = None) -> Quantizer:
    """k-means centroids (two levels from TWO_LEVEL_FROM on), then a PQ codebook on the sample's residuals.

    sample: n x D unit tokens; total_tokens (default n) sizes the default number of centroids.
    """
    faiss = _faiss()
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, dim = sample.shape
    if dim % cfg.pq_m:
        raise ValueError(f"the PQ size {cfg.pq_m} must divide the embedding size {dim}")
    nlist = max(1, min(cfg.nlist or default_nlist(total_tokens or n), n))
    nbits = max(1, min(cfg.pq_nbits, int(math.log2(max(n, 2)))))
    if nbits != cfg.pq_nbits:
        logger.warning("only %d training tokens: the product quantiser uses %d bits per code instead of %d",
                       n, nbits, cfg.pq_nbits)
    if nlist >= TWO_LEVEL_FROM:
        centroids, group_centroids, group_of = _two_level_kmeans(sample, nlist, cfg)
    else:
        centroids = _kmeans(sample, nlist, cfg.kmeans_iters, cfg.seed, max_points_per_centroid=max(256, n // nlist + 1))
        group_centroids = group_of = None
    placeholder = np.zeros((1, 1, dim), np.float32)  # the codebook comes next; assignment does not need it
    lists = Quantizer(centroids, placeholder, group_centroids, group_of).assign(sample)
    pq = faiss.ProductQuantizer(dim, cfg.pq_m, nbits)
    pq.cp.seed = cfg.seed + 1
    pq.cp.min_points_per_centroid = 1
    pq.cp.max_points_per_centroid = 64  # 16k points per sub-quantiser are plenty for 256 codes
    pq.train(np.ascontiguousarray(sample - centroids[lists]))
    codebook = faiss.vector_to_array(pq.centroids).reshape(cfg.pq_m, 2 ** nbits, dim // cfg.pq_m)
    logger.info("trained the ANN quantiser: %d tokens, %d centroids%s, %d-byte codes", n, len(centroids),
                "" if group_of is None else f" in {len(group_centroids)} groups", cfg.pq_m)
    return Quantizer(centroids, codebook, group_centroids, group_of)


def sample_rows(num_rows: int, count: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a deterministic random sample (all rows when count >= num_rows)."""
    if count >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=count, replace=False))


class CodedVideos(NamedTuple):
    """Compressed tokens of some videos: slots are the branches' tokens one after the other."""

    vids: np.ndarray  # n int64
    lists: np.ndarray  # n x L int32 centroid ids, -1 on padded slots
    codes: np.ndarray  # n x L x m uint8 PQ codes of the residuals


def encode_videos(quantizer: Quantizer, vids: np.ndarray, branches: Sequence[Tuple[np.ndarray, np.ndarray]]) -> CodedVideos:
    """branches: per branch (tokens n x L_b x D, mask n x L_b), in a fixed order."""
    tokens = np.concatenate([np.asarray(t, dtype=np.float32) for t, _ in branches], axis=1)  # n x L x D
    mask = np.concatenate([np.asarray(m).astype(bool) for _, m in branches], axis=1)  # n x L
    n, slots, _ = tokens.shape
    lists = np.full((n, slots), -1, np.int32)
    codes = np.zeros((n, slots, quantizer.m), np.uint8)
    valid = tokens[mask]  # n_valid x D
    if len(valid):
        lists[mask] = quantizer.assign(valid)
        codes[mask] = quantizer.encode(valid, lists[mask])
    return CodedVideos(np.asarray(vids, dtype=np.int64), lists, codes)


def _inverted_lists(lists: np.ndarray, branch_of_slot: np.ndarray, nlist: int, num_branches: int):
    """CSR from centroid to (row * num_branches + branch) entries, one per distinct entry."""
    rows = np.broadcast_to(np.arange(lists.shape[0])[:, None], lists.shape)
    keys = rows * num_branches + branch_of_slot[None, :]
    valid = lists >= 0
    pairs = np.unique(lists[valid].astype(np.int64) * (lists.shape[0] * num_branches) + keys[valid])
    cents, entries = np.divmod(pairs, lists.shape[0] * num_branches)
    offsets = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(cents, minlength=nlist), out=offsets[1:])
    return offsets, entries.astype(np.int64)


class AnnIndex:
    """Queryable union of coded parts (the parts may come from separately built shards)."""

    def __init__(self, quantizer: Quantizer, parts: Sequence[CodedVideos], branch_sizes: Sequence[int]):
        self.quantizer = quantizer
        self.branch_sizes = tuple(int(s) for s in branch_sizes)
        self.num_branches = len(self.branch_sizes)
        parts = [p for p in parts if len(p.vids)]
        slots = sum(self.branch_sizes)
        for p in parts:
            if p.lists.shape[1] != slots:
                raise ValueError(f"coded part has {p.lists.shape[1]} token slots, expected {slots}")
        self.vids = np.concatenate([p.vids for p in parts]) if parts else np.zeros(0, np.int64)
        self.lists = np.concatenate([p.lists for p in parts]) if parts else np.zeros((0, slots), np.int32)
        self.codes = np.concatenate([p.codes for p in parts]) if parts else np.zeros((0, slots, quantizer.m), np.uint8)
        self.branch_of_slot = np.repeat(np.arange(self.num_branches), self.branch_sizes)
        self.offsets, self.entries = _inverted_lists(self.lists, self.branch_of_slot, quantizer.nlist, self.num_branches)
        # centroid ids with padded slots pointing at row nlist of a similarity table, where -inf is
        self._table_rows_t = torch.from_numpy(np.where(self.lists < 0, quantizer.nlist, self.lists)).long()
        self._codes_t = torch.from_numpy(self.codes)

    def __len__(self) -> int:
        return len(self.vids)

    def nbytes(self) -> int:
        """Memory used for candidate generation: quantiser, centroid ids, codes, inverted lists."""
        quantizer = sum(a.nbytes for a in self.quantizer.arrays().values())
        return int(quantizer + self.lists.nbytes + self.codes.nbytes
                   + self.offsets.nbytes + self.entries.nbytes // 2)  # entries fit in int32

    # ---- stages -------------------------------------------------------------------------------
    def _probe(self, cent_sim: torch.Tensor, nprobe: int):
        """Stage 1: candidate rows and their estimated scores from the probed lists."""
        n, nlist = cent_sim.shape
        nb = self.num_branches
        k = min(nprobe + 1, nlist)
        top = cent_sim.topk(k, dim=1)
        probe_ids = top.indices[:, :nprobe].numpy()  # n x p
        fill = top.values[:, -1] if nlist > nprobe else torch.full((n,), -1.0)  # first unprobed
        starts = self.offsets[probe_ids]  # n x p
        lengths = self.offsets[probe_ids + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64), torch.zeros(0)
        # Gather every entry of every probed list (CSR ranges, vectorised).
        flat_len = lengths.ravel()
        seg = np.repeat(np.arange(flat_len.size), flat_len)
        within = np.arange(total) - np.repeat(np.cumsum(flat_len) - flat_len, flat_len)
        entries = self.entries[np.repeat(starts.ravel(), flat_len) + within]
        token = seg // probe_ids.shape[1]
        sims = cent_sim[torch.from_numpy(token), torch.from_numpy(probe_ids.ravel()[seg])]
        rows, branch = np.divmod(entries, nb)
        cands, inverse = np.unique(rows, return_inverse=True)
        est = fill[:, None].repeat(1, len(cands) * nb)  # n x (C nb)
        index = torch.from_numpy(inverse * nb + branch)
        est.view(-1).scatter_reduce_(0, torch.from_numpy(token) * (len(cands) * nb) + index, sims, reduce="amax")
        scores = est.view(n, len(cands), nb).mean(0).sum(1)  # C
        return cands, scores

    def _branch_slices(self):
        start = 0
        for size in self.branch_sizes:
            yield slice(start, start + size)
            start += size

    def _centroid_table(self, cent_sim: torch.Tensor) -> torch.Tensor:
        """n x nlist query-token-to-centroid similarities -> (nlist+1) x n, one row per centroid and a
        last row of -inf for padded slots (never a maximum). Built once per query for stages 2 and 3."""
        return torch.cat([cent_sim.t(), cent_sim.new_full((1, cent_sim.shape[0]), float("-inf"))])

    def _chunks(self, rows: np.ndarray, videos_per_chunk: int):
        """(slice of rows, their row numbers as a tensor), videos_per_chunk at a time."""
        r = torch.from_numpy(rows)
        for a in range(0, len(rows), videos_per_chunk):
            yield slice(a, a + videos_per_chunk), r[a:a + videos_per_chunk]

    def _centroid_scores(self, table: torch.Tensor, rows: np.ndarray, videos_per_chunk: int = CHUNK_VIDEOS) -> torch.Tensor:
        """Stage 2: scores with every token replaced by its centroid. table: _centroid_table. Returns C."""
        n = table.shape[1]
        total = table.new_zeros(len(rows))
        for part, ids in self._chunks(rows, videos_per_chunk):
            sim = table.index_select(0, self._table_rows_t[ids].view(-1)).view(len(ids), -1, n)  # c x L x n
            total[part] = self._branch_sum(sim)
        return total

    def _branch_sum(self, sim: torch.Tensor) -> torch.Tensor:
        """c x L x n token similarities (-inf on padded slots) -> c: sum over branches of the mean
        over query tokens of the best token; a branch without tokens adds 0."""
        total = sim.new_zeros(sim.shape[0])
        for part in self._branch_slices():
            best = sim[:, part].amax(dim=1)  # c x n
            total += torch.where(torch.isfinite(best), best, torch.zeros(())).mean(1)
        return total

    def _pq_scores(self, q: torch.Tensor, table: torch.Tensor, rows: np.ndarray,
                   videos_per_chunk: int = CHUNK_VIDEOS) -> torch.Tensor:
        """Stage 3: scores on centroid + PQ residual, by lookup tables (no decompression). Returns C.

        q: n x D valid query tokens; table: _centroid_table.
        """
        quant = self.quantizer
        n = q.shape[0]
        # lut[j * ksub + k, i] = <sub-vector j of query token i, codeword k of sub-quantiser j>
        sub = q.view(n, quant.m, quant.dsub).transpose(0, 1)  # m x n x dsub
        lut = torch.bmm(quant._codebook_t, sub.transpose(1, 2)).reshape(quant.m * quant.ksub, n)
        offsets = torch.arange(quant.m) * quant.ksub
        total = q.new_zeros(len(rows))
        for part, ids in self._chunks(rows, videos_per_chunk):
            codes = self._codes_t[ids].view(-1, quant.m).long() + offsets  # (c L) x m
            sim = F.embedding_bag(codes, lut, mode="sum") + table.index_select(0, self._table_rows_t[ids].view(-1))
            total[part] = self._branch_sum(sim.view(len(ids), -1, n))  # from (c L) x n
        return total

    def search(self, fetch: FetchFn, q: torch.Tensor, q_mask: torch.Tensor, top: int, cfg: AnnSearchConfig,
               interaction: str = "mms", prefetch: Optional[PrefetchFn] = None) -> SearchResult:
        """Top `top` videos for one query. q: Lq x D float32 unit tokens, q_mask: Lq."""
        q_mask = q_mask.bool()
        qv = q[q_mask]  # n x D
        cent_sim = qv @ self.quantizer._centroids_t.t()  # n x nlist
        rows, est = self._probe(cent_sim, cfg.nprobe)
        num_candidates = len(rows)
        table = self._centroid_table(cent_sim)
        # Each stage's estimate only decides what the stage keeps: it is computed only when it cuts.
        for keep, score_fn in ((cfg.centroid_candidates, None),
                               (cfg.pq_candidates, lambda r: self._centroid_scores(table, r)),
                               (cfg.rerank, lambda r: self._pq_scores(qv, table, r))):
            if keep and len(rows) > keep:
                if score_fn is not None:
                    est = score_fn(rows)
                best = est.topk(keep).indices.numpy()
                rows = rows[best]
        empty = np.zeros(0, np.float32)
        if not len(rows):
            return SearchResult(np.zeros(0, np.int64), empty, np.zeros((0, self.num_branches), np.float32), 0)
        vids = self.vids[rows]
        if prefetch is not None:
            prefetch(vids)
        per_branch = torch.cat([exact_scores(q, q_mask, fetch(vids[a:a + EXACT_CHUNK]), interaction)
                                for a in range(0, len(vids), EXACT_CHUNK)])  # C x B
        total = per_branch.sum(1).numpy()
        # Highest score first; among equal scores the lower id, as the exhaustive search orders them.
        order = np.lexsort((vids, -total))[:top]
        return SearchResult(vids[order], total[order], per_branch.numpy()[order], num_candidates)


def exact_scores(q: torch.Tensor, q_mask: torch.Tensor, candidates: List[TokenBatch], interaction: str) -> torch.Tensor:
    """q: Lq x D, q_mask: Lq; returns C x B exact branch scores (MeanMaxSim or MaxSim)."""
    cols = [mean_max_sim(q[None], q_mask[None], c.tokens, c.mask, interaction=interaction)[0] for c in candidates]
    return torch.stack(cols, dim=1)  # C x B
