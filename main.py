"""Train and evaluate Video-ColBERT.

    python main.py --do_train 1 --do_eval 1 --anno_path ... --video_path ... [flags]
    torchrun --nproc_per_node 4 main.py ...          (or python -m torch.distributed.launch)
    python main.py --do_eval 1 --init_model ckpt.pth --anno_path ... --video_path ...

``python main.py --help`` lists every flag with its default; train.sh / eval.sh run the per-dataset
recipes in configs/. This file only wires: parse, check, build, then train and/or evaluate.
"""
import json
import logging
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

from tvr.config import RunConfig, reconcile_with_checkpoint
from tvr.dataloaders import build_eval_dataset, build_train_dataset, check_annotation_files
from tvr.dataloaders.base import get_reader
from tvr.dataloaders.probe import UndecodableVideosError, check_eval_videos
from tvr.engine.evaluate import evaluate, load_temporal_queries, log_results, results_summary, temporal_metrics
from tvr.engine.examples import save_examples
from tvr.engine.model_io import build_model, stored_config
from tvr.engine.trainer import BEST, PROBE_CACHE, TrainOptions, clear_previous_run, fit, prepare_output_dir
from tvr.options import explicit_flags, parse_args
from tvr.utils.checkpoint import atomic_save_json, extract_state_dict, load_checkpoint, load_model_weights
from tvr.utils.launch import cleanup_distributed, end_process, setup_distributed
from tvr.utils.logger import log_args, setup_logging
from tvr.utils.versions import package_versions

logger = logging.getLogger("main")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_config(args, argv):
    """The run's configuration, and the checkpoint object when --init_model gives one.

    With --init_model the model (and the data settings it was trained with) come from the checkpoint;
    typed flags that contradict it are refused. A bare state dict has no configuration: the flags say.
    """
    run_cfg = RunConfig.from_args(args)
    if not args.init_model:
        return run_cfg, None
    ckpt = load_checkpoint(args.init_model)
    stored = stored_config(ckpt, args.init_model)
    if stored is None:
        logger.warning("%s holds no configuration (a bare state dict): the model is built from the flags", args.init_model)
        return run_cfg, ckpt
    return reconcile_with_checkpoint(run_cfg, stored, explicit_flags(argv), args.init_model), ckpt


def write_eval_results(summary: dict, output_dir: str) -> None:
    """eval_results.json; an earlier one (another checkpoint's) is kept under a dated name, never overwritten."""
    path = os.path.join(output_dir, "eval_results.json")
    if os.path.exists(path):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
        kept = os.path.join(output_dir, f"eval_results.{stamp}.json")
        shutil.move(path, kept)
        logger.info("kept the previous %s as %s", path, kept)
    atomic_save_json(summary, path)


def probe_evaluation_videos(splits, data_cfg, args, runtime) -> None:
    """An undecodable validation or test video stops the run now, not after the first epoch.

    Rank 0 probes (cached in the output folder, so a resumed run does not probe again) and tells the
    other ranks, so that every rank stops together."""
    error = None
    if runtime.is_main:
        try:
            check_eval_videos(list(splits), data_cfg, workers=max(args.workers, 1),
                              cache_path=os.path.join(args.output_dir, PROBE_CACHE), progress=sys.stderr.isatty())
        except Exception as e:  # any failure: the other ranks must not wait for rank 0 forever
            error = e
    failed = torch.tensor([error is not None], device=runtime.device)
    if runtime.world_size > 1:
        torch.distributed.broadcast(failed, src=0)
    if error is not None:
        raise error
    if failed.item():
        raise UndecodableVideosError("rank 0 stopped while probing the evaluation videos (its log says why)", [])


def main(argv=None) -> dict:
    args = parse_args(argv)
    runtime = setup_distributed(args.local_rank)
    setup_logging(None, runtime.rank)  # the console until the output folder is known to be ours
    try:
        replaced = prepare_output_dir(args.output_dir, training=args.do_train, resume=args.resume,
                                      overwrite=args.overwrite, is_main=runtime.is_main)
        setup_logging(args.output_dir, runtime.rank)
        results = run(args, argv, runtime, replaced)
    except Exception as e:
        # One readable line first (in log.txt too, once it is open), then the traceback for debugging.
        logger.error("fatal: %s: %s", type(e).__name__, e, exc_info=True)
        raise
    cleanup_distributed()
    return results


def run(args, argv, runtime, replaced=()) -> dict:
    """``replaced``: an earlier run's files that --overwrite deletes, once this run has passed its checks."""
    log_args(args)
    logger.info("world size %d, device %s, libraries %s", runtime.world_size, runtime.device, package_versions())
    seed_everything(args.seed)

    # Everything that can be checked without a model is checked before one is built (or downloaded).
    run_cfg, init_ckpt = resolve_config(args, argv)
    splits = (("train", "val") if args.do_train else ()) + (("test",) if args.do_eval else ())
    check_annotation_files(run_cfg.data, splits=splits)
    if args.do_train and run_cfg.optim.batch_size // runtime.world_size < 2 and run_cfg.model.loss == "softmax":
        raise ValueError(f"--batch_size {run_cfg.optim.batch_size} over {runtime.world_size} processes leaves one pair "
                         f"per process; the softmax loss needs at least 2 per process")

    model = build_model(run_cfg.model, load_weights=init_ckpt is None, cache_dir=args.clip_cache_dir)
    run_cfg.model = model.config  # now carries the encoder's architecture
    run_cfg.data.input_resolution = model.clip.input_resolution
    for name in ("image_mean", "image_std", "interpolation", "resize_mode"):  # the backbone's own preprocessing
        if hasattr(model.clip, name):
            setattr(run_cfg.data, name, getattr(model.clip, name))
    model = model.to(runtime.device)
    if init_ckpt is not None:
        load_model_weights(model, extract_state_dict(init_ckpt), strict=True)
        logger.info("initialised the model from %s", args.init_model)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    logger.info("run configuration: %s", json.dumps(run_cfg.to_dict()))

    tokenizer = model.clip.tokenizer  # the backbone's own
    eval_sets = {}  # one per split file: "val" is the test split where a dataset has no validation split

    def eval_set(split: str):
        split = get_reader(run_cfg.data).resolve_split(split)
        if split not in eval_sets:
            eval_sets[split] = build_eval_dataset(run_cfg.data, split, tokenizer=tokenizer)
        return eval_sets[split]

    evaluated = args.init_model
    if args.do_train:
        train_set = build_train_dataset(run_cfg.data, tokenizer=tokenizer)
        val_data = eval_set("val")
        probe_evaluation_videos([val_data] + ([eval_set("test")] if args.do_eval else []), run_cfg.data, args, runtime)
    # Every start-up check has passed: only now is a run that --overwrite replaces deleted.
    if runtime.is_main:
        if replaced:
            clear_previous_run(args.output_dir, list(replaced))
        atomic_save_json(run_cfg.to_dict(), os.path.join(args.output_dir, "config.json"))
    if args.do_train:
        opts = TrainOptions(
            output_dir=args.output_dir, workers=args.workers, batch_size_val=args.batch_size_val,
            n_display=args.n_display, checkpoint_every=args.checkpoint_every, keep_epochs=args.keep_epochs,
            precision=args.precision, resume=args.resume, dsl=args.dsl,
        )
        state = fit(model, run_cfg, opts, runtime, train_set, val_data)
        evaluated = os.path.join(args.output_dir, BEST)
        if args.do_eval:
            load_model_weights(model, load_checkpoint(evaluated)["model"], strict=True)
            logger.info("testing the best checkpoint %s (epoch %d, val R@1 %.2f)", evaluated, state.best_epoch, state.best_r1)

    results = None
    if args.do_eval:
        test_data = eval_set("test")
        results, sim = evaluate(model, test_data, runtime, args.batch_size_val, args.workers, args.precision, args.dsl)
        if runtime.is_main:
            log_results("test", results)
            summary = results_summary(results)
            temporal = load_temporal_queries(run_cfg.data.anno_path)  # only the synthetic dataset has one
            if temporal is not None:
                summary["temporal"] = temporal_metrics(sim, test_data.query_to_video, test_data.video_ids, temporal)
                logger.info("test temporal hard queries: %s", summary["temporal"])
            if args.save_examples:
                save_examples(model, test_data, sim, run_cfg.data, os.path.join(args.output_dir, "examples"), args.save_examples)
            summary["checkpoint"] = os.path.abspath(evaluated) if evaluated else "untrained model (no --init_model)"
            summary["versions"] = package_versions()
            write_eval_results(summary, args.output_dir)
    return results


if __name__ == "__main__":
    try:
        main()
        status = 0
    except KeyboardInterrupt:
        status = 130
    except Exception:  # already logged, with its traceback in log.txt
        status = 1
    end_process(status)
