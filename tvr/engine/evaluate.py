"""Evaluation: encode every text and video once, score in shards, compute retrieval metrics.

Each rank encodes a contiguous slice of the texts and of the videos, all ranks gather the video
tokens, and each scores only its own texts against all videos; rank 0 alone receives the rows.
No rank computes the full similarity matrix alone.
"""
import json
import logging
import os
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Subset

from ..models.modeling import TokenSet, VideoColBERT
from ..utils.distributed import all_gather_no_grad, gather_to_rank
from ..utils.launch import Runtime
from ..utils.metrics import dual_softmax_rerank, format_metrics, t2v_metrics, v2t_metrics
from ..utils.sampling import shard_range
from .precision import autocast_context

logger = logging.getLogger(__name__)


def _shard_loader(dataset, runtime: Runtime, batch_size: int, workers: int) -> DataLoader:
    """This rank's contiguous slice. A rank left with nothing (more ranks than items) still encodes
    item 0 once, so that its outputs have the right shapes; the caller keeps none of its rows."""
    indices = list(shard_range(len(dataset), runtime.rank, runtime.world_size)) or [0]
    local_batch = max(1, batch_size // runtime.world_size)
    return DataLoader(Subset(dataset, indices), batch_size=local_batch, shuffle=False, num_workers=workers, pin_memory=runtime.device.type == "cuda")


def _local_count(dataset, runtime: Runtime) -> int:
    return len(shard_range(len(dataset), runtime.rank, runtime.world_size))


def _cat_token_sets(parts) -> TokenSet:
    return TokenSet(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]))


@torch.no_grad()
def encode_texts(model: VideoColBERT, dataset, runtime: Runtime, batch_size: int, workers: int, precision: str) -> TokenSet:
    parts = []
    for batch in _shard_loader(dataset, runtime, batch_size, workers):
        with autocast_context(runtime.device, precision):
            out = model.encode_text(batch["text_ids"].to(runtime.device), batch["text_mask"].to(runtime.device))
        parts.append(TokenSet(out.tokens.float(), out.mask))
    n = _local_count(dataset, runtime)
    texts = _cat_token_sets(parts)
    return TokenSet(texts.tokens[:n], texts.mask[:n])


@torch.no_grad()
def encode_videos(model: VideoColBERT, dataset, runtime: Runtime, batch_size: int, workers: int, precision: str):
    """Returns (token set per branch for THIS RANK's videos, bool tensor of those that failed to decode)."""
    parts: Dict[str, list] = {}
    failed = []
    for batch in _shard_loader(dataset, runtime, batch_size, workers):
        with autocast_context(runtime.device, precision):
            out = model.encode_video(batch["video"].to(runtime.device), batch["video_mask"].to(runtime.device))
        for name, ts in out.items():
            parts.setdefault(name, []).append(TokenSet(ts.tokens.float(), ts.mask))
        failed.append(batch["failed"].to(runtime.device).bool())
    n = _local_count(dataset, runtime)
    local = {name: _cat_token_sets(p) for name, p in parts.items()}
    return {name: TokenSet(ts.tokens[:n], ts.mask[:n]) for name, ts in local.items()}, torch.cat(failed)[:n]


@contextmanager
def _stage(timings: Dict[str, float], name: str, device: torch.device):
    """Wall time of one evaluation stage (CUDA work is waited for, so it counts where it runs)."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = time.perf_counter() - start


@torch.no_grad()
def evaluate(
    model: VideoColBERT,
    eval_data,
    runtime: Runtime,
    batch_size: int,
    workers: int = 0,
    precision: str = "fp32",
    dsl: bool = False,
    timings: Optional[Dict[str, float]] = None,
):
    """Returns ({"t2v": metrics, "v2t": metrics, "failed_videos": [...]}, full similarity) on rank 0; (None, None) elsewhere.

    Logs the wall time of each stage (this rank's); `timings`, when given, receives them in seconds."""
    model.eval()
    timings = {} if timings is None else timings
    device = runtime.device
    with _stage(timings, "encode_texts", device):
        texts = encode_texts(model, eval_data.texts, runtime, batch_size, workers, precision)
    with _stage(timings, "encode_videos", device):
        local_videos, local_failed = encode_videos(model, eval_data.videos, runtime, batch_size, workers, precision)
    with _stage(timings, "gather_videos", device):
        videos = {name: TokenSet(all_gather_no_grad(ts.tokens), all_gather_no_grad(ts.mask)) for name, ts in local_videos.items()}
        failed = all_gather_no_grad(local_failed)
    with _stage(timings, "score", device):
        sim_local = model.similarity(texts, videos)  # n_local_texts x Nv
        # Videos that could not be decoded (only with --allow_decode_errors) are never retrieved.
        sim_local[:, failed] = float("-inf")
    with _stage(timings, "gather_scores", device):
        sim = gather_to_rank(sim_local, dst=0)  # Nq x Nv, on rank 0 only
    if not runtime.is_main:
        return None, None
    with _stage(timings, "metrics", device):
        sim = sim.cpu()
        query_to_video = torch.as_tensor(eval_data.query_to_video)
        # Dual softmax normalises each direction's candidates: over texts for t2v, over videos for v2t.
        sim_t2v = dual_softmax_rerank(sim, dim=0) if dsl else sim
        sim_v2t = dual_softmax_rerank(sim, dim=1) if dsl else sim
        results = {"t2v": t2v_metrics(sim_t2v, query_to_video), "v2t": v2t_metrics(sim_v2t, query_to_video)}
    logger.info("evaluation of %d texts x %d videos, seconds per stage: %s", sim.shape[0], sim.shape[1],
                ", ".join(f"{name} {t:.2f}" for name, t in timings.items()))
    failed_ids = [eval_data.video_ids[i] for i in failed.nonzero().flatten().tolist()]
    if failed_ids:
        results["failed_videos"] = failed_ids
        logger.warning("%d videos failed to decode and were scored as never retrieved: %s", len(failed_ids), failed_ids[:10])
    return results, sim


def results_summary(results: dict, digits: int = 2) -> dict:
    """Metrics for eval_results.json and checkpoints, rounded for people (names as in the paper's tables)."""
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    out = {d: {k: round(float(results[d][k]), digits) for k in keys} for d in ("t2v", "v2t")}
    if "failed_videos" in results:
        out["failed_videos"] = results["failed_videos"]
    return out


def log_results(split: str, results: dict) -> None:
    for direction in ("t2v", "v2t"):
        logger.info("%s %s", split, format_metrics(direction, results[direction]))


# ---- the synthetic set's temporal hard queries ----------------------------------------------------

def load_temporal_queries(anno_path: str) -> Optional[dict]:
    """anno_path/temporal_queries.json (written by tvr.dataloaders.synthetic), or None when absent (every real dataset)."""
    path = os.path.join(anno_path, "temporal_queries.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def temporal_metrics(sim, query_to_video, video_ids: List[str], temporal: dict) -> dict:
    """Scores on the synthetic set's temporal hard queries (percent), rounded for people.

    sim: Nq x Nv similarity (rows = evaluation queries); query_to_video: Nq; video_ids: Nv.
    temporal_R1: R@1 over the temporal queries, a tie with another video counting as a miss.
    twin_accuracy: how often a temporal query scores its own video strictly above its twin
    (50 = blind to time; a frame-only model sits there).
    """
    sim = torch.as_tensor(sim, dtype=torch.float64)
    q2v = torch.as_tensor(query_to_video).long()
    column = {v: i for i, v in enumerate(video_ids)}
    twin = {}
    for p in temporal["pairs"]:
        twin[column[p["video_id"]]] = column[p["twin"]]
        twin[column[p["twin"]]] = column[p["video_id"]]
    hits = wins = 0
    queries = temporal["query_indices"]
    for q in queries:
        gt = int(q2v[q])
        row = sim[q]
        others = torch.cat([row[:gt], row[gt + 1:]])
        hits += bool(row[gt] > others.max())
        wins += bool(row[gt] > row[twin[gt]])
    n = max(1, len(queries))
    return {"temporal_R1": round(100.0 * hits / n, 2), "twin_accuracy": round(100.0 * wins / n, 2),
            "num_temporal_queries": len(queries)}
