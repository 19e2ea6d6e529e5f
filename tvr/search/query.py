"""Answer text queries against an index: exhaustive MeanMaxSim (the evaluation's score) or the
approximate index, plus where in each video the query matched."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..dataloaders.base import count_long_captions
from ..models.modeling import TokenSet
from .ann_config import AnnSearchConfig
from .model_ref import SearchModel, check_index_model, checkpoint_identity, load_search_model
from .store import IndexReader, SearchIndexError

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    row: int  # entry of the index
    key: str  # video path relative to the indexed folder
    score: float
    scores: Dict[str, float]  # per branch
    best_time: Optional[float]  # seconds: the frame most query tokens matched best


@dataclass
class QueryResult:
    query: str
    hits: List[Hit]
    truncated: bool = False
    notes: List[str] = field(default_factory=list)

    def to_json(self, video_root: str = "") -> dict:
        return {"query": self.query,
                "results": [{"video": h.key, "score": h.score, "scores": h.scores, "best_time": h.best_time}
                            for h in self.hits]}


class Searcher:
    """An index with the model that built it."""

    def __init__(self, index_dir: str, checkpoint: Optional[str] = None, device: str = "cpu"):
        self.reader = IndexReader(index_dir)
        manifest = self.reader.manifest
        if not len(self.reader):
            raise SearchIndexError(f"index {index_dir} holds no video")
        path = checkpoint or manifest["checkpoint"]["path"]
        try:
            sha = checkpoint_identity(path)
        except FileNotFoundError:
            if checkpoint:
                raise
            raise FileNotFoundError(f"the checkpoint that built {index_dir}, {path}, is gone; pass --checkpoint "
                                    f"with a copy of it") from None
        check_index_model(manifest, sha, path, index_dir)
        self.sm: SearchModel = load_search_model(path, device=device, sha256=sha)
        self.device = torch.device(device)
        self._ann = None

    # ---- text ------------------------------------------------------------------------------
    @property
    def max_words(self) -> int:
        return self.sm.run_cfg.data.max_words

    def encode_queries(self, queries: Sequence[str]) -> tuple:
        """(TokenSet of the queries, per query whether it was cut to max_words)."""
        tok = self.sm.tokenizer
        truncated = [count_long_captions([q], self.max_words, tok) > 0 for q in queries]
        ids, mask = tok.tokenize(list(queries), self.max_words)
        with torch.no_grad():
            text = self.sm.model.encode_text(ids.to(self.device), mask.to(self.device))
        return TokenSet(text.tokens.float().cpu(), text.mask.cpu()), truncated

    # ---- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def exhaustive_scores(self, text: TokenSet, chunk: int = 4096) -> Dict[str, torch.Tensor]:
        """Nq x N score matrix per branch over every indexed video: the model's own scoring."""
        parts: Dict[str, List[torch.Tensor]] = {b: [] for b in self.reader.branches}
        for _, batches in self.reader.chunks(chunk):
            videos = {b: TokenSet(t.tokens, t.mask.long()) for b, t in zip(self.reader.branches, batches)}
            for b, s in self.sm.model.branch_scores(text, videos, chunk_size=self.sm.model.config.sim_chunk_size).items():
                parts[b].append(s)
        return {b: torch.cat(p, dim=1) for b, p in parts.items()}

    def ann(self):
        if self._ann is None:
            from .ann_store import load_ann

            self._ann = load_ann(self.reader)
            if self._ann is None:
                raise SearchIndexError(f"index {self.reader.index_dir} has no ANN data: build it with "
                                       f"`python -m tvr.search index ... --ann`")
        return self._ann

    def search(self, queries: Sequence[str], top: int = 10, ann: Optional[AnnSearchConfig] = None) -> List[QueryResult]:
        text, truncated = self.encode_queries(queries)
        results = []
        if ann is None:
            scores = self.exhaustive_scores(text)
            total = torch.stack(list(scores.values())).sum(0)  # Nq x N
            for qi, q in enumerate(queries):
                rows = _top_rows(total[qi], top)
                per = {b: scores[b][qi, rows] for b in scores}
                results.append(self._result(q, text, qi, rows, total[qi, rows], per, truncated[qi]))
        else:
            index = self.ann()
            fetch = lambda vids: self.reader.fetch(self.reader.rows_of_vids(vids))  # noqa: E731
            prefetch = lambda vids: self.reader.prefetch(self.reader.rows_of_vids(vids))  # noqa: E731
            for qi, q in enumerate(queries):
                res = index.search(fetch, text.tokens[qi], text.mask[qi], top, ann, self.sm.model.config.interaction,
                                   prefetch=prefetch)
                rows = torch.from_numpy(self.reader.rows_of_vids(res.vids))
                per = {b: torch.from_numpy(res.branch_scores[:, i]) for i, b in enumerate(self.reader.branches)}
                results.append(self._result(q, text, qi, rows, torch.from_numpy(res.scores), per, truncated[qi]))
        return results

    def _result(self, query, text, qi, rows, totals, per_branch, truncated) -> QueryResult:
        times = self.best_times(TokenSet(text.tokens[qi], text.mask[qi]), rows.numpy())
        hits = [Hit(int(r), self.reader.entries[int(r)].key, float(totals[i]),
                    {b: float(per_branch[b][i]) for b in per_branch}, times[i])
                for i, r in enumerate(rows.tolist())]
        notes = [f"the query is longer than the model's {self.max_words} tokens and was cut"] if truncated else []
        return QueryResult(query, hits, truncated, notes)

    def best_times(self, query: TokenSet, rows: np.ndarray) -> List[Optional[float]]:
        """Per video: the timestamp of the frame that most valid query tokens match best.

        Frame branch when the model has one; otherwise the video tokens aligned with frames (the
        expansion tokens belong to no frame). Ties go to the earliest frame.
        """
        if not len(rows):
            return []
        branch = "frame" if "frame" in self.reader.branches else "video" if "video" in self.reader.branches else None
        if branch is None:
            return [None] * len(rows)
        batch = self.reader.fetch(rows)[self.reader.branches.index(branch)]
        num_frames = self.sm.model.config.max_frames
        q = query.tokens[query.mask.bool()]  # n x D
        out = []
        for i, r in enumerate(rows):
            frame = best_frame(q, batch.tokens[i, :num_frames], batch.mask[i, :num_frames])
            out.append(None if frame is None else float(self.reader.timestamps(int(r))[frame]))
        return out


def best_frame(q: torch.Tensor, frames: torch.Tensor, frame_mask: torch.Tensor) -> Optional[int]:
    """The real frame that most query tokens (q: n x D) take as their maximum; ties: the earliest.

    frames: T x D, frame_mask: T. None when the video has no real frame.
    """
    frame_mask = frame_mask.bool()
    if not frame_mask.any():
        return None
    sim = q @ frames.t()  # n x T
    sim[:, ~frame_mask] = -float("inf")
    votes = torch.bincount(sim.argmax(dim=1), minlength=frames.shape[0])  # T
    return int(votes.argmax())


def _top_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores, best first; equal scores in index order."""
    order = np.lexsort((np.arange(len(scores)), -scores.numpy()))
    return torch.from_numpy(order[:k])


def format_table(result: QueryResult, branches: Sequence[str]) -> str:
    head = ["rank", "score"] + [f"s_{b}" for b in branches] + ["best_time"]
    lines = [f"query: {result.query}"] + [f"  note: {n}" for n in result.notes]
    lines.append("  " + "  ".join(f"{h:>9}" for h in head) + "  path")
    for rank, h in enumerate(result.hits, 1):
        t = f"{h.best_time:.1f}s" if h.best_time is not None else "-"
        cells = [f"{rank:>9}", f"{h.score:>9.4f}"] + [f"{h.scores[b]:>9.4f}" for b in branches] + [f"{t:>9}", h.key]
        lines.append("  " + "  ".join(cells))
    if not result.hits:
        lines.append("  (no result)")
    return "\n".join(lines)
