"""AdamW parameter groups and the warm-up + cosine learning-rate schedule, as CLIP4Clip and DRL train.

Parameter groups: (CLIP | new) x (decay | no_decay).

* CLIP parameters (names starting with ``clip_prefix``, "clip." by default) train at
  ``lr * coef_lr``: they are pre-trained and a full learning rate would wreck them; new modules
  (temporal encoder, expansion tokens, loss) train at ``lr``.
* Weight decay is applied only to weight matrices / kernels.  A parameter gets NO weight decay when
  1. it has fewer than 2 dimensions: every bias, every LayerNorm/BatchNorm weight, scalar logit
     scales and temperatures, 1-D tokens such as CLIP's ``class_embedding``; or
  2. a component of its dotted name contains one of :data:`NO_DECAY_NAME_PARTS`: embeddings and
     learned tokens (``token_embedding``, ``positional_embedding``, ``frame_position_embedding``,
     ``expansion_tokens``), temperatures and logit scales/biases; or
  3. a component of its dotted name starts with ``loss`` (the loss module's log-temperatures and
     biases, whatever their shape).
  Decaying these would pull embeddings and temperatures towards 0, which is a regularisation of
  nothing useful (decay is meant to shrink weight matrices).
"""

from __future__ import annotations

import logging
import math
from typing import Dict, List

import torch
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

__all__ = ["NO_DECAY_NAME_PARTS", "is_no_decay", "build_param_groups", "build_optimizer",
           "WarmupCosine", "warmup_cosine_schedule"]

#: Substrings that exempt a parameter from weight decay when found in any component of its name.
NO_DECAY_NAME_PARTS = ("embedding", "positional", "expansion", "temperature", "logit_scale", "logit_bias")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True when parameter ``name`` is exempt from weight decay (rule in the module docstring)."""
    if param.ndim < 2:
        return True
    parts = name.split(".")
    if any(key in part for part in parts for key in NO_DECAY_NAME_PARTS):
        return True
    return any(part.startswith("loss") for part in parts)


def build_param_groups(model: torch.nn.Module, lr: float, coef_lr: float, weight_decay: float,
                       clip_prefix: str = "clip.", loss_lr: float | None = None,
                       loss_prefix: str = "loss.") -> List[Dict]:
    """AdamW parameter groups: (clip | new) x (decay | no_decay), plus ``loss``; empty groups dropped.

    Each group is a dict with ``params``, ``lr``, ``weight_decay`` and a ``name``
    (``clip_decay``, ``clip_no_decay``, ``new_decay``, ``new_no_decay``, ``loss``) for logging.
    The loss's temperatures and biases (names starting with ``loss_prefix``) form their own group at
    ``loss_lr`` (default ``lr``) without weight decay: from its initial bias of -10, a sigmoid loss
    whose bias moves by about lr per step needs thousands of steps before a positive pair scores
    above 0, so the loss's scalars usually want a larger rate than the new modules.  Frozen
    parameters (``requires_grad=False``) are left out.  A DDP wrapper is unwrapped so names do not
    carry its ``module.`` prefix.
    """
    if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    buckets: Dict[str, List] = {"clip_decay": [], "clip_no_decay": [], "new_decay": [], "new_no_decay": [], "loss": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(loss_prefix):
            buckets["loss"].append((name, p))
            continue
        origin = "clip" if name.startswith(clip_prefix) else "new"
        kind = "no_decay" if is_no_decay(name, p) else "decay"
        buckets[f"{origin}_{kind}"].append((name, p))

    group_lrs = {"clip": lr * coef_lr, "new": lr, "loss": lr if loss_lr is None else loss_lr}
    groups = []
    for key, named in buckets.items():
        if not named:
            continue
        group_lr = group_lrs[key.split("_")[0]]
        group_wd = 0.0 if key.endswith("no_decay") or key == "loss" else weight_decay
        groups.append({"name": key, "params": [p for _, p in named], "lr": group_lr, "weight_decay": group_wd})
        logger.info("param group %-13s lr %.3g wd %.3g: %d tensors, %d values", key, group_lr, group_wd,
                    len(named), sum(p.numel() for _, p in named))
        logger.debug("param group %s: %s", key, [n for n, _ in named])
    return groups


def build_optimizer(param_groups: List[Dict], lr: float | None = None, fused: bool = True) -> torch.optim.AdamW:
    """AdamW(betas=(0.9, 0.98), eps=1e-6) as CLIP/DRL.  Group lrs win; ``lr`` is only the default
    for groups without one. ``fused=False`` keeps torch's per-tensor loop (benchmarks compare them)."""
    if lr is None:
        lr = param_groups[0]["lr"] if param_groups and "lr" in param_groups[0] else 1e-4
    settings = dict(lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def adamw(**kw):  # torch writes its defaults into the group dicts it is given: give it copies
        return torch.optim.AdamW([dict(g) for g in param_groups], **settings, **kw)

    if not fused:
        return adamw()
    try:
        # The fused kernel updates each tensor in one pass instead of about eight; it matters for
        # CLIP's 49408-row token embedding, which AdamW updates in full every step.
        return adamw(fused=True)
    except RuntimeError as exc:  # torch < 2.4 on the CPU, or a device without the fused kernel
        logger.info("AdamW without the fused kernel (%s)", exc)
        return adamw()


class WarmupCosine:
    """Learning-rate factor at optimizer step ``step`` (0-based, = number of steps already taken).

    ``step < warmup``: ``step / warmup`` (linear from 0; the very first update has lr 0, as in
    Hugging Face's schedule); then ``0.5 * (1 + cos(pi * progress))`` with
    ``progress = (step - warmup) / (total - warmup)``, reaching 0 at ``total`` and staying 0 after.
    A class (not a lambda) so that LambdaLR's state_dict stores its settings.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.total_steps == self.warmup_steps:
            return 0.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """LambdaLR applying :class:`WarmupCosine` to every group's own base lr (ratios between groups
    are kept).  Call ``scheduler.step()`` once after each ``optimizer.step()``.  Its state_dict
    (with the optimizer's) is all a resume needs."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
