"""Train and evaluate Video-ColBERT.

    python main.py --do_train --do_eval --anno_path ... --video_path ... [flags]
    torchrun --nproc_per_node 4 main.py ...          (or python -m torch.distributed.launch)

``python main.py --help`` lists every flag with its default; train.sh / eval.sh wrap the usual runs.
"""
import logging
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tvr.dataloaders import DataConfig, build_eval_dataset, build_train_dataset, check_annotation_files
from tvr.dataloaders.synthetic import load_temporal_queries, temporal_metrics
from tvr.engine.evaluate import evaluate
from tvr.engine.train import TrainState, train_one_epoch
from tvr.models.modeling import VideoColBERT
from tvr.models.module_clip import load_clip
from tvr.options import model_config, parse_args
from tvr.utils.checkpoint import (
    atomic_save,
    atomic_save_json,
    extract_state_dict,
    load_checkpoint,
    load_model_weights,
    rng_state,
    set_rng_state,
)
from tvr.utils.launch import Runtime, cleanup_distributed, setup_distributed
from tvr.utils.logger import log_args, setup_logging
from tvr.utils.metrics import format_metrics
from tvr.utils.optim import build_optimizer, build_param_groups, warmup_cosine_schedule
from tvr.utils.sampling import GlobalBatchSampler

logger = logging.getLogger("main")

LAST, BEST = "last.pth", "best.pth"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def results_json(results: dict) -> dict:
    """eval_results.json uses the names of the paper tables: MdR / MnR."""
    keys = ("R1", "R5", "R10", "MdR", "MnR")
    out = {d: {k: float(results[d][k]) for k in keys} for d in ("t2v", "v2t")}
    if "failed_videos" in results:
        out["failed_videos"] = results["failed_videos"]
    return out


def log_results(split: str, results: dict) -> None:
    for direction in ("t2v", "v2t"):
        logger.info("%s %s", split, format_metrics(direction, results[direction]))


# Flags that shape the trajectory of a run: resuming with another value would silently mix two runs.
RESUME_MUST_MATCH = (
    "datatype", "train_list", "base_encoder", "batch_size", "epochs", "lr", "coef_lr", "weight_decay",
    "warmup_proportion", "seed", "max_words", "max_frames", "video_framerate", "slice_framepos",
    "interaction", "branches", "query_expansion", "visual_expansion", "temporal_layers", "loss", "dual_loss",
)


def check_resume_args(saved: dict, args, path: str) -> None:
    differ = [
        f"--{k} {saved[k]!r} in the checkpoint, {getattr(args, k)!r} now"
        for k in RESUME_MUST_MATCH
        if k in saved and saved[k] != getattr(args, k)
    ]
    if differ:
        raise ValueError(f"--resume: {path} was written by a run with other settings: " + "; ".join(differ)
                         + ". Resume with the same flags, or use another --output_dir.")


def train(args, runtime: Runtime, model: VideoColBERT, data_cfg) -> None:
    train_set = build_train_dataset(data_cfg)
    val_data = build_eval_dataset(data_cfg, "val")
    sampler = GlobalBatchSampler(len(train_set), args.batch_size, runtime.rank, runtime.world_size, args.seed)
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=args.workers,
        pin_memory=runtime.device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )
    total_steps = sampler.steps_per_epoch * args.epochs
    optimizer = build_optimizer(build_param_groups(model, args.lr, args.coef_lr, args.weight_decay))
    scheduler = warmup_cosine_schedule(optimizer, int(args.warmup_proportion * total_steps), total_steps)
    use_scaler = args.precision == "fp16" and runtime.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    state = TrainState()
    logger.info("%d training pairs, %d steps per epoch, %d steps in all", len(train_set), sampler.steps_per_epoch, total_steps)

    last_path = os.path.join(args.output_dir, LAST)
    if args.resume and os.path.exists(last_path):
        ckpt = load_checkpoint(last_path)
        check_resume_args(ckpt.get("args", {}), args, last_path)
        load_model_weights(model, ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        logger.info("resumed from %s at epoch %d, step %d", last_path, state.epoch, state.global_step)
    elif args.resume:
        logger.info("--resume: no %s yet, starting from scratch", last_path)

    ddp_model = model
    if runtime.world_size > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)

    def save_last(s: TrainState) -> None:
        if runtime.is_main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "state": vars(s).copy(),
                    "rng": rng_state(),
                    "args": vars(args),
                },
                last_path,
            )

    def on_step_end(s: TrainState) -> None:
        if args.checkpoint_every and s.global_step % args.checkpoint_every == 0 and s.step_in_epoch < sampler.steps_per_epoch:
            save_last(s)

    while state.epoch < args.epochs:
        sampler.set_epoch(state.epoch, state.step_in_epoch)
        # Worker seeds (frame jitter) depend on the epoch alone, so a resumed epoch draws the same.
        loader.generator.manual_seed(args.seed * 1_000_003 + state.epoch)
        replaced = train_one_epoch(
            ddp_model, loader, optimizer, scheduler, scaler, state,
            device=runtime.device, precision=args.precision, grad_clip=args.grad_clip,
            n_display=args.n_display, total_steps=total_steps, is_main=runtime.is_main, on_step_end=on_step_end,
        )
        replaced = _sum_across_ranks(replaced, runtime)
        if replaced:
            logger.warning("epoch %d: %d samples were replaced because their video failed to decode", state.epoch, replaced)

        results, _ = evaluate(model, val_data, runtime, args.batch_size_val, args.workers, args.precision, args.dsl)
        if runtime.is_main:
            log_results(f"epoch {state.epoch} val", results)
            r1 = results["t2v"]["R1"]
            state.history.append({"epoch": state.epoch, "val_t2v_R1": float(r1), "replaced": replaced})
            atomic_save({"model": model.state_dict(), "epoch": state.epoch, "args": vars(args)}, os.path.join(args.output_dir, f"epoch{state.epoch}.pth"))
            if r1 > state.best_r1:
                state.best_r1 = float(r1)
                atomic_save({"model": model.state_dict(), "epoch": state.epoch, "val": results_json(results), "args": vars(args)}, os.path.join(args.output_dir, BEST))
                logger.info("new best val text-to-video R@1 %.2f at epoch %d", r1, state.epoch)
        state.epoch += 1
        state.step_in_epoch = 0
        save_last(state)


def _sum_across_ranks(value: int, runtime: Runtime) -> int:
    if runtime.world_size == 1:
        return value
    t = torch.tensor([value], device=runtime.device)
    dist.all_reduce(t)
    return int(t.item())


def main(argv=None) -> dict:
    args = parse_args(argv)
    runtime = setup_distributed(args.local_rank)
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logging(args.output_dir, runtime.rank)
    log_args(args)
    logger.info("world size %d, device %s", runtime.world_size, runtime.device)
    seed_everything(args.seed)

    # Fail on missing annotation files before anything slow (a download, a model build) runs.
    splits = (("train", "val") if args.do_train else ()) + (("test",) if args.do_eval else ())
    check_annotation_files(DataConfig.from_args(args), splits=splits)
    clip = load_clip(args.base_encoder, cache_dir=args.clip_cache_dir)
    data_cfg = DataConfig.from_args(args, input_resolution=clip.input_resolution)
    model = VideoColBERT(clip, model_config(args)).to(runtime.device)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.init_model:
        load_model_weights(model, extract_state_dict(load_checkpoint(args.init_model)))
        logger.info("initialised model weights from %s", args.init_model)

    results = None
    if args.do_train:
        train(args, runtime, model, data_cfg)
    if args.do_eval:
        test_data = build_eval_dataset(data_cfg, "test")
        results, sim = evaluate(model, test_data, runtime, args.batch_size_val, args.workers, args.precision, args.dsl)
        if runtime.is_main:
            log_results("test", results)
            summary = results_json(results)
            temporal = load_temporal_queries(args.anno_path)  # only the synthetic dataset has one
            if temporal is not None:
                summary["temporal"] = temporal_metrics(sim, test_data.query_to_video, test_data.video_ids, temporal)
                logger.info("test temporal hard queries: %s", summary["temporal"])
            atomic_save_json(summary, os.path.join(args.output_dir, "eval_results.json"))
    cleanup_distributed()
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
