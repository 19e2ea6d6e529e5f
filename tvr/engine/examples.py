"""`--save_examples N`: explanation pictures for the test queries a model gets most right and most wrong.

For each of the N best hits (ground truth ranked first, by the widest margin over the runner-up) and the
N worst misses (ground truth ranked lowest), the picture shows the query's tokens against the ground-truth
video's frames for both branches (tvr.search.explain), so a person sees what matched and what did not.
"""
from __future__ import annotations

import logging
import os
from typing import List, Tuple

import torch

from ..dataloaders.config import DataConfig

logger = logging.getLogger(__name__)


def pick_examples(sim: torch.Tensor, query_to_video: torch.Tensor, n: int) -> List[Tuple[str, int]]:
    """[("hit" | "miss", query index)]: the n best hits and the n worst misses of a Nq x Nv score matrix."""
    rows = torch.arange(sim.shape[0])
    truth = sim[rows, query_to_video]  # Nq
    rank = (sim > truth[:, None]).sum(1)  # 0: ranked first
    others = sim.clone()
    others[rows, query_to_video] = float("-inf")
    margin = truth - others.max(1).values
    hits = [int(q) for q in torch.argsort(margin, descending=True) if rank[q] == 0][:n]
    misses = [int(q) for q in torch.argsort(rank, descending=True, stable=True) if rank[q] > 0][:n]
    return [("hit", q) for q in hits] + [("miss", q) for q in misses]


def save_examples(model, test_data, sim: torch.Tensor, data_cfg: DataConfig, out_dir: str, n: int) -> List[str]:
    from ..search.explain import save_explanation  # matplotlib is imported only when pictures are asked for
    from ..search.videos import VideoLoader

    os.makedirs(out_dir, exist_ok=True)
    load = VideoLoader(data_cfg)
    written = []
    for kind, q in pick_examples(sim, test_data.query_to_video, n):
        v = int(test_data.query_to_video[q])
        item = test_data.texts[q]
        video = load(test_data.videos.data.video_paths[v])
        path = os.path.join(out_dir, f"{kind}_q{q}_{test_data.video_ids[v]}.png")
        title = f"{kind}: query {q} against its video {test_data.video_ids[v]}"
        save_explanation(model, (item["text_ids"], item["text_mask"]), video.video, video.mask, video.timestamps,
                         video.thumbnails, path, title=title)
        written.append(path)
    logger.info("wrote %d example pictures to %s", len(written), out_dir)
    return written
