"""Retrieval losses on LOCAL rows against GLOBAL columns: SigLIP's sigmoid loss and the
symmetric InfoNCE of CLIP / CLIP4Clip / DRL, plus modules holding their learnable parameters.

Layout. Under DDP each rank holds b of the B = W * b pairs of the global batch. It scores its
own b queries (rows) against all B candidates gathered from every rank (columns), so its score
matrix is b x B and the positive of local row i sits at column `row_offset + i`, where
`row_offset` is the index of the rank's first pair in the global batch (rank * b with equal
shards). In one process, b = B and row_offset = 0.

Why each loss is a mean over LOCAL rows. DDP averages parameter gradients over the W ranks.
If rank r's loss is L_r = (1/b) * sum_{i in rank r} l_i, then (1/W) * sum_r grad L_r =
grad (1/(W b)) * sum_i l_i = grad (1/B) * sum_i l_i, the gradient of the one-process loss on
the global batch, provided the gradients of the gathered columns are routed back to the rank
that produced them and summed over ranks (`tvr.utils.distributed.all_gather_with_grad`). The
reported loss value of a rank is then its shard's share; averaging it over ranks gives the
global loss.

Parameter names contain "log_temperature", "bias" or "logit_scale", so the optimiser can keep
them out of weight decay by name.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


LOSSES = ("sigmoid", "softmax")
# CLIP caps the logit scale at 100 (open_clip / CLIP's training clamp it to ln 100).
MAX_LOGIT_SCALE = 100.0


def _check_scores(scores: torch.Tensor, row_offset: int, name: str = "scores") -> None:
    if scores.dim() != 2:
        raise ValueError(f"{name} must be 2-D (local rows x global columns), got {tuple(scores.shape)}")
    b, n = scores.shape
    if row_offset < 0 or row_offset + b > n:
        raise ValueError(f"{name}: rows {row_offset}..{row_offset + b - 1} have no positive column "
                         f"in a matrix with {n} columns")


def _positive_columns(b: int, row_offset: int, device) -> torch.Tensor:
    return torch.arange(row_offset, row_offset + b, device=device)  # b


def sigmoid_loss(scores: torch.Tensor, log_temperature: torch.Tensor, bias: torch.Tensor,
                 row_offset: int = 0) -> torch.Tensor:
    """SigLIP loss of b local rows against B global columns (positives at row_offset + i):

        L = -(1/b) * sum_i sum_j log sigmoid( z_ij * (exp(t) * s_ij + c) ),
        z_ij = +1 at j = row_offset + i, else -1.

    Dividing by the LOCAL row count b (not B) is what makes DDP's gradient averaging give the
    global-batch gradient; see the module docstring.
    """
    _check_scores(scores, row_offset)
    b = scores.shape[0]
    logits = log_temperature.exp() * scores + bias  # b x B
    z = torch.full_like(logits, -1.0)
    z[torch.arange(b, device=scores.device), _positive_columns(b, row_offset, scores.device)] = 1.0
    return -F.logsigmoid(z * logits).sum() / max(b, 1)


def infonce_loss(scores: torch.Tensor, logit_scale: torch.Tensor, row_offset: int = 0) -> torch.Tensor:
    """One direction of InfoNCE: mean over local rows of cross-entropy of
    min(exp(logit_scale), 100) * scores with the target column row_offset + i."""
    _check_scores(scores, row_offset)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    targets = _positive_columns(scores.shape[0], row_offset, scores.device)
    return F.cross_entropy(scale * scores, targets)


def symmetric_infonce_loss(scores_t2v: torch.Tensor, scores_v2t: torch.Tensor,
                           logit_scale: torch.Tensor, row_offset: int = 0) -> torch.Tensor:
    """CLIP4Clip / DRL symmetric InfoNCE: 0.5 * (CE over text rows + CE over video rows).

    scores_t2v: b x B, local texts vs global videos; scores_v2t: b x B, local videos vs global
    texts (the same scores as the t2v matrix, other orientation: for asymmetric scores such as
    MMS, v2t[j, i] is still the score of text i for video j). The scale exp(logit_scale) is
    capped at 100 as in CLIP (no gradient past the cap).
    """
    if scores_t2v.shape != scores_v2t.shape:
        raise ValueError(f"t2v and v2t scores differ in shape: {tuple(scores_t2v.shape)} vs {tuple(scores_v2t.shape)}")
    return 0.5 * (infonce_loss(scores_t2v, logit_scale, row_offset)
                  + infonce_loss(scores_v2t, logit_scale, row_offset))


class SigmoidLoss(nn.Module):
    """Sigmoid loss with a learnable log-temperature t (init log 10) and bias c (init -10)."""

    def __init__(self, init_log_temperature: float = math.log(10.0), init_bias: float = -10.0):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(float(init_log_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, scores: torch.Tensor, row_offset: int = 0,
                scores_v2t: Optional[torch.Tensor] = None) -> torch.Tensor:
        # scores_v2t is accepted for a uniform interface; the sigmoid loss is pairwise and the
        # transposed matrix adds nothing.
        dtype = torch.promote_types(scores.dtype, self.bias.dtype)  # low-precision scores: loss in fp32
        return sigmoid_loss(scores.to(dtype), self.log_temperature.to(dtype), self.bias.to(dtype), row_offset)

    def log_values(self) -> Dict[str, torch.Tensor]:
        return {"temperature": self.log_temperature.detach().exp(), "bias": self.bias.detach().clone()}


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a learnable logit scale (init log(1/0.07), CLIP's initial value;
    pass log(100) = 4.6052 to start from a pretrained CLIP's scale)."""

    def __init__(self, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(self, scores: torch.Tensor, row_offset: int = 0,
                scores_v2t: Optional[torch.Tensor] = None) -> torch.Tensor:
        if scores_v2t is None:
            scores_v2t = _transpose_if_local_is_global(scores, row_offset)
        dtype = torch.promote_types(scores.dtype, self.logit_scale.dtype)  # low-precision scores: loss in fp32
        return symmetric_infonce_loss(scores.to(dtype), scores_v2t.to(dtype), self.logit_scale.to(dtype), row_offset)

    def log_values(self) -> Dict[str, torch.Tensor]:
        return {"logit_scale": self.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE)}


def _transpose_if_local_is_global(scores: torch.Tensor, row_offset: int) -> torch.Tensor:
    """Without DDP (b == B) the video-to-text matrix is the transpose; otherwise the caller
    must score local videos against gathered texts itself."""
    if scores.dim() == 2 and scores.shape[0] == scores.shape[1] and row_offset == 0:
        return scores.t()
    raise ValueError("the softmax loss needs scores_v2t (local videos x global texts) when the "
                     "score matrix is not square (distributed training)")


class RetrievalLoss(nn.Module):
    """The training objective for one or more score branches.

    Args:
        loss: "sigmoid" (SigLIP, the paper's) or "softmax" (symmetric InfoNCE, DRL/CLIP4Clip).
        dual: True: one loss per branch, each with its own parameters, summed
            (L = L_frame + L_video). False: one loss on the summed score s = sum of branches.
        branches: names of the score branches, e.g. ("frame", "video"), ("frame",).
        init_log_temperature, init_bias: sigmoid loss initial values (log 10, -10).
        init_logit_scale: softmax loss initial value (log(1/0.07)).

    Parameters live in `self.losses[<key>]` with key = branch name (dual) or "sum" (single),
    e.g. `losses.frame.log_temperature`, `losses.frame.bias`, `losses.sum.logit_scale`.

    forward(scores, row_offset=0, scores_v2t=None) takes dict branch -> b x B scores
    (local queries x global videos) and, for the softmax loss under DDP, dict branch -> b x B
    (local videos x global queries). Returns (total loss, logs): logs holds detached 0-dim
    tensors (no host sync here): "loss_<key>", and "temperature_<key>" (= exp t), "bias_<key>"
    or "logit_scale_<key>" (= min(exp, 100)).
    """

    def __init__(self, loss: str = "sigmoid", dual: bool = True,
                 branches: Iterable[str] = ("frame", "video"),
                 init_log_temperature: float = math.log(10.0), init_bias: float = -10.0,
                 init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.branches = tuple(branches)
        if not self.branches:
            raise ValueError("at least one branch is needed")
        if len(set(self.branches)) != len(self.branches) or "sum" in self.branches:
            raise ValueError(f"branch names must be distinct and not 'sum': {self.branches}")
        self.loss = loss
        self.dual = bool(dual)
        keys = self.branches if self.dual else ("sum",)

        def make() -> nn.Module:
            if loss == "sigmoid":
                return SigmoidLoss(init_log_temperature, init_bias)
            return InfoNCELoss(init_logit_scale)

        self.losses = nn.ModuleDict({k: make() for k in keys})

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, dual={self.dual}, branches={self.branches}"

    def _select(self, scores: Mapping[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
        missing = [b for b in self.branches if b not in scores]
        if missing:
            raise KeyError(f"{name} lacks branches {missing} (has {sorted(scores)})")
        if self.dual:
            return {b: scores[b] for b in self.branches}
        total = scores[self.branches[0]]
        for b in self.branches[1:]:
            total = total + scores[b]
        return {"sum": total}

    def forward(self, scores: Mapping[str, torch.Tensor], row_offset: int = 0,
                scores_v2t: Optional[Mapping[str, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        t2v = self._select(scores, "scores")
        v2t = self._select(scores_v2t, "scores_v2t") if scores_v2t is not None else {}
        total = None
        logs: Dict[str, torch.Tensor] = {}
        for key, s in t2v.items():
            module = self.losses[key]
            value = module(s, row_offset=row_offset, scores_v2t=v2t.get(key))
            total = value if total is None else total + value
            logs[f"loss_{key}"] = value.detach()
            for name, val in module.log_values().items():
                logs[f"{name}_{key}"] = val
        return total, logs
