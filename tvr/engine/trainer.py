"""The training run: epochs, validation, checkpoints and resume, in the order they happen.

``fit`` is the epoch loop (nanoGPT style: every step of an epoch is in ``train.train_one_epoch``).
What a run writes to ``output_dir``:
  last.pth     model, optimizer, scheduler, scaler, progress and RNG states (resume), after every epoch
               and every ``checkpoint_every`` steps
  best.pth     the weights of the epoch with the best validation text-to-video R@1
  epochN.pth   per-epoch weights, the newest ``keep_epochs`` of them (none by default)
  curves.png   loss, temperature and bias per branch against steps, validation R@1 per epoch
Every checkpoint carries the run's configuration (``model_io.checkpoint_payload``).
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..config import RESUME_MAY_DIFFER, RunConfig
from ..models.modeling import VideoColBERT
from ..utils.checkpoint import atomic_save, load_checkpoint, load_model_weights, rng_state, set_rng_state
from ..utils.curves import plot_curves
from ..utils.launch import Runtime
from ..utils.logger import drop_earlier_log_lines
from ..utils.optim import build_optimizer, build_param_groups, warmup_cosine_schedule
from ..utils.sampling import GlobalBatchSampler
from .evaluate import evaluate, log_results, results_summary
from .model_io import checkpoint_payload, stored_config
from .precision import grad_scaler
from .train import TrainState, train_one_epoch

logger = logging.getLogger(__name__)

LAST, BEST, CURVES = "last.pth", "best.pth", "curves.png"
_EPOCH_FILE = re.compile(r"^epoch(\d+)\.pth$")


@dataclass
class TrainOptions:
    """Settings of a training run that do not change what it computes (never compared on resume)."""

    output_dir: str
    workers: int = 4
    batch_size_val: int = 64
    n_display: int = 50
    checkpoint_every: int = 500
    keep_epochs: int = 0
    precision: str = "fp32"
    resume: bool = False
    dsl: bool = False


def fit(model: VideoColBERT, run_cfg: RunConfig, opts: TrainOptions, runtime: Runtime, train_set, val_data) -> TrainState:
    """Train ``model`` for ``run_cfg.optim.epochs`` epochs, validating and checkpointing after each."""
    optim = run_cfg.optim
    sampler = GlobalBatchSampler(len(train_set), optim.batch_size, runtime.rank, runtime.world_size, optim.seed)
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=opts.workers,
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(optim.seed),
    )
    total_steps = sampler.steps_per_epoch * optim.epochs
    groups = build_param_groups(model, optim.lr, optim.coef_lr, optim.weight_decay, loss_lr=optim.effective_loss_lr)
    optimizer = build_optimizer(groups)
    scheduler = warmup_cosine_schedule(optimizer, int(optim.warmup_proportion * total_steps), total_steps)
    scaler = grad_scaler(runtime.device, opts.precision)
    logger.info("%d training pairs, %d steps per epoch, %d steps in all", len(train_set), sampler.steps_per_epoch, total_steps)

    last_path = os.path.join(opts.output_dir, LAST)
    state = TrainState()
    if opts.resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        check_resume_config(ckpt, run_cfg, last_path)
        load_model_weights(model, ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        logger.info("resumed from %s at epoch %d, step %d", last_path, state.epoch, state.global_step)
    elif opts.resume:
        logger.info("--resume: no %s yet, starting from scratch", last_path)

    ddp_model = model
    if runtime.world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)

    def save_last() -> None:
        if runtime.is_main:
            atomic_save(checkpoint_payload(
                model, run_cfg, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else {}, state=vars(state).copy(), rng=rng_state(),
            ), last_path)

    def on_step_end(s: TrainState) -> None:
        if opts.checkpoint_every and s.global_step % opts.checkpoint_every == 0 and s.step_in_epoch < sampler.steps_per_epoch:
            save_last()

    while state.epoch < optim.epochs:
        sampler.set_epoch(state.epoch, state.step_in_epoch)
        # Worker seeds (frame jitter) depend on the epoch alone, so a resumed epoch draws the same.
        loader.generator.manual_seed(optim.seed * 1_000_003 + state.epoch)
        replaced = train_one_epoch(
            ddp_model, loader, optimizer, scheduler, scaler, state,
            device=runtime.device, precision=opts.precision, grad_clip=optim.grad_clip,
            n_display=opts.n_display, total_steps=total_steps, is_main=runtime.is_main, on_step_end=on_step_end,
        )
        replaced = _sum_across_ranks(replaced, runtime)
        if replaced:
            logger.warning("epoch %d: %d samples were replaced because their video failed to decode", state.epoch, replaced)

        results, _ = evaluate(model, val_data, runtime, opts.batch_size_val, opts.workers, opts.precision, opts.dsl)
        if runtime.is_main:
            log_results(f"epoch {state.epoch} val ({val_data.split} split)", results)
            r1 = float(results["t2v"]["R1"])
            state.history.append({"epoch": state.epoch, "step": state.global_step, "val_t2v_R1": r1, "replaced": replaced})
            if opts.keep_epochs:
                save_epoch(model, run_cfg, state.epoch, opts)
            if r1 > state.best_r1:
                state.best_r1, state.best_epoch = r1, state.epoch
                atomic_save(checkpoint_payload(model, run_cfg, epoch=state.epoch, val=results_summary(results)),
                            os.path.join(opts.output_dir, BEST))
                logger.info("new best val text-to-video R@1 %.2f at epoch %d", r1, state.epoch)
        state.epoch += 1
        state.step_in_epoch = 0
        save_last()
        if runtime.is_main:
            plot_curves(state.step_log, state.history, os.path.join(opts.output_dir, CURVES))
    if runtime.world_size > 1:
        dist.barrier()  # best.pth is complete before any rank reads it
    return state


def save_epoch(model: VideoColBERT, run_cfg: RunConfig, epoch: int, opts: TrainOptions) -> None:
    """Write epochN.pth and delete the older ones beyond the newest ``keep_epochs``."""
    atomic_save(checkpoint_payload(model, run_cfg, epoch=epoch), os.path.join(opts.output_dir, f"epoch{epoch}.pth"))
    saved = sorted((int(m.group(1)), name) for name in os.listdir(opts.output_dir) if (m := _EPOCH_FILE.match(name)))
    for _, name in saved[:-opts.keep_epochs]:
        os.remove(os.path.join(opts.output_dir, name))


def check_resume_config(ckpt: dict, run_cfg: RunConfig, path: str) -> None:
    """Refuse to resume a run written with other settings, naming every field that differs."""
    saved = stored_config(ckpt, path)
    if saved is None:
        return
    differ = saved.differences(run_cfg, ignore=RESUME_MAY_DIFFER)
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with other settings (checkpoint vs now): "
                         + "; ".join(differ) + ". Resume with the same flags, or use another --output_dir.")


def _sum_across_ranks(value: int, runtime: Runtime) -> int:
    if runtime.world_size == 1:
        return value
    t = torch.tensor([value], device=runtime.device)
    dist.all_reduce(t)
    return int(t.item())


# ---- the output folder --------------------------------------------------------------------------

PROBE_CACHE = "video_probe.json"  # the start-up video probe's cache (main.py)
RUN_FILES = ("last.pth", "best.pth", "eval_results.json", "config.json", "curves.png", "log.txt", PROBE_CACHE)
_STALE_TMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # tvr.utils.checkpoint.atomic_write's names


def previous_run_files(output_dir: str) -> list:
    """Files of an earlier training run in ``output_dir`` (checkpoints and their results)."""
    if not os.path.isdir(output_dir):
        return []
    names = [n for n in RUN_FILES if os.path.exists(os.path.join(output_dir, n))]
    names += sorted(n for n in os.listdir(output_dir) if _EPOCH_FILE.match(n))
    return names


def prepare_output_dir(output_dir: str, *, training: bool, resume: bool, overwrite: bool, is_main: bool) -> list:
    """Never destroy a finished run: a training run into a folder holding another run's checkpoints is
    refused unless it resumes that run or ``--overwrite`` replaces it. Returns the files an
    ``--overwrite`` replaces; they are deleted only later (``clear_previous_run``), once the new run has
    passed its start-up checks. Also removes temporary files that a killed checkpoint write left
    behind (only ours, only those whose writer is gone)."""
    existing = previous_run_files(output_dir)
    holds_run = any(n.endswith(".pth") for n in existing)
    if training and holds_run and not (resume or overwrite):
        raise FileExistsError(
            f"--output_dir {output_dir} already holds a run ({', '.join(existing)}). Continue it with --resume, "
            f"choose a new --output_dir, or pass --overwrite to delete that run's files and start again.")
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        remove_stale_temporaries(output_dir)
    return existing if training and overwrite else []


def clear_previous_run(output_dir: str, names: list) -> None:
    """``--overwrite``: delete the previous run's files (``prepare_output_dir``'s list) and its lines
    in log.txt, now that the new run has passed its checks. The video probe's cache stays: its
    entries are checked against each file's size and time stamp."""
    deleted = [n for n in names if n not in ("log.txt", PROBE_CACHE) and os.path.exists(os.path.join(output_dir, n))]
    for name in deleted:
        os.remove(os.path.join(output_dir, name))
    drop_earlier_log_lines(output_dir)
    if deleted:
        logger.warning("--overwrite: deleted the previous run's files in %s: %s (log.txt now starts with this run)",
                       output_dir, ", ".join(deleted))


def remove_stale_temporaries(output_dir: str) -> list:
    """Delete ``.<name>.<pid>.<hex>.tmp`` files whose writing process no longer exists."""
    removed = []
    for path in glob.glob(os.path.join(output_dir, ".*.tmp")):
        m = _STALE_TMP.match(os.path.basename(path))
        if m is None or _process_alive(int(m.group(1))):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    if removed:
        logger.warning("removed %d temporary file(s) left by an interrupted checkpoint write: %s", len(removed),
                       ", ".join(os.path.basename(p) for p in removed))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def best_checkpoint(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, BEST)
    return path if os.path.exists(path) else None
