"""Settings of the approximate index: how it is built and how hard a query searches it.

A module of its own (no torch, no faiss) so that the command line takes its defaults from here.
The search defaults reached recall@10 0.97 against exhaustive search at about 75 ms per query on
100k synthetic videos and 2 threads (bench/bench_search.py; README, "At scale"); smaller stages
are faster and find less, larger ones the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AnnBuildConfig:
    nlist: int = 0  # centroids; 0: chosen from the number of tokens (ann.default_nlist)
    pq_m: int = 32  # bytes per token code; must divide the embedding size
    pq_nbits: int = 8  # bits per sub-quantiser code (lowered automatically for tiny corpora)
    train_tokens: int = 0  # tokens sampled to train both quantisers; 0: ann.training_tokens decides
    kmeans_iters: int = 10
    seed: int = 0


@dataclass
class AnnSearchConfig:
    nprobe: int = 96  # centroids probed per query token; their lists' videos are the candidates
    centroid_candidates: int = 24576  # stage 2: candidates scored with tokens replaced by centroids
    pq_candidates: int = 12288  # stage 3: candidates scored on decompressed tokens (centroid + PQ)
    rerank: int = 1024  # stage 4: candidates scored exactly on the stored tokens
