"""One training epoch, every step visible in one function."""
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm import tqdm

from .precision import autocast_context

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress that a checkpoint must carry to resume exactly where a run stopped."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_r1: float = float("-inf")
    best_epoch: int = -1
    history: list = field(default_factory=list)  # one dict per epoch: validation R@1, ...
    step_log: list = field(default_factory=list)  # one dict per logged step: loss, temperature, bias per branch


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:  # peak resident set size of this process
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train_one_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    scaler: Optional[torch.amp.GradScaler],
    state: TrainState,
    *,
    device: torch.device,
    precision: str,
    grad_clip: float,
    n_display: int,
    total_steps: int,
    is_main: bool,
    on_step_end: Callable[[TrainState], None],
) -> int:
    """Runs the rest of ``state.epoch``; returns how many samples were replaced after decode errors."""
    model.train()
    replaced = 0
    start_time, start_step = time.time(), state.global_step
    # A bar only on a terminal: in a redirected log the n_display lines below say the same once.
    bar = tqdm(loader, desc=f"epoch {state.epoch}", disable=not (is_main and sys.stderr.isatty()), dynamic_ncols=True)
    for batch in bar:
        text_ids = batch["text_ids"].to(device, non_blocking=True)  # b x L
        text_mask = batch["text_mask"].to(device, non_blocking=True)  # b x L
        video = batch["video"].to(device, non_blocking=True)  # b x T x 3 x R x R
        video_mask = batch["video_mask"].to(device, non_blocking=True)  # b x T
        replaced += int(batch["replaced"].sum())

        # forward: this rank's queries against the whole (all-gathered) batch of videos
        with autocast_context(device, precision):
            loss, stats = model(text_ids, text_mask, video, video_mask)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {state.global_step}; lower --lr or use --precision fp32")

        # backward (the grad scaler only matters for fp16 autocast)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()

        state.step_in_epoch += 1
        state.global_step += 1
        if is_main and (state.global_step % n_display == 0 or state.global_step == total_steps):
            elapsed = time.time() - start_time
            steps_done = state.global_step - start_step
            samples_per_s = steps_done * loader.batch_sampler.global_batch / max(elapsed, 1e-9)
            eta_min = (total_steps - state.global_step) * elapsed / max(steps_done, 1) / 60
            lrs = " ".join(f"{g['lr']:.2e}" for g in optimizer.param_groups)
            values = {k: float(v) for k, v in stats.items()}
            state.step_log.append({"step": state.global_step, "loss": loss.item(), **values})
            extra = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            logger.info(
                "epoch %d step %d/%d loss %.4f lr %s %s | %.1f samples/s, peak mem %.0f MB, ETA %.1f min",
                state.epoch, state.global_step, total_steps, loss.item(), lrs, extra, samples_per_s,
                _memory_mb(device), eta_min,
            )
        if is_main:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        on_step_end(state)
    return replaced
