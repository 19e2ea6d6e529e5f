"""Where the built-in demo's minutes go: run main.py under cProfile and split its wall time into stages.

    python bench/profile_demo.py                                   # the demo recipe
    python bench/profile_demo.py -- --epochs 1 --max_words 16
    python bench/profile_demo.py --generate /tmp/synthetic_gen   # also time generating the dataset

The flags are the synthetic recipe's, read from configs/synthetic.sh through scripts/common.sh as train.sh
reads them (its thread count too, unless OMP_NUM_THREADS is set); everything after `--` is passed to main.py
on top of them. Stages are inclusive times
of the functions that do the work, so they overlap where one calls another (data waits and the train step are
both inside "train epochs"). With --workers >= 1 decoding runs in a worker process: the main process only sees
the wait for the next batch.
"""
import argparse
import cProfile
import importlib.util
import os
import pstats
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# main.py flag <- recipe variable, as train.sh passes them
RECIPE_FLAGS = (
    ("--datatype", "DATATYPE"), ("--anno_path", "ANNO_PATH"), ("--video_path", "VIDEO_PATH"),
    ("--base_encoder", "BASE_ENCODER"), ("--max_frames", "MAX_FRAMES"), ("--video_framerate", "VIDEO_FRAMERATE"),
    ("--max_words", "MAX_WORDS"), ("--query_expansion", "QUERY_EXPANSION"), ("--epochs", "EPOCHS"),
    ("--workers", "WORKERS"), ("--cache_frames", "CACHE_FRAMES"), ("--batch_size", "BATCH_SIZE"),
    ("--batch_size_val", "BATCH_SIZE_VAL"), ("--lr", "LR"), ("--coef_lr", "COEF_LR"), ("--loss", "LOSS"),
    ("--seed", "SEED"),
)


def recipe_values(names) -> dict:
    """The synthetic recipe's values (environment overrides included), read the way train.sh reads them."""
    script = "DATASET=synthetic; source scripts/common.sh; " + "; ".join(f'echo "${{{n}}}"' for n in names)
    out = subprocess.run(["bash", "-c", script], cwd=REPO, check=True, capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def demo_flags(values: dict) -> list:
    flags = ["--do_train", "1", "--do_eval", "1", "--overwrite", "1"]
    for flag, name in RECIPE_FLAGS:
        flags += [flag, values[name]]
    return flags


# stage -> (file suffix, function name): inclusive time of that function (summed over its calls)
STAGES = (
    ("main() total", ("main.py", "main")),
    ("frame cache: decode every video once", ("frame_cache.py", "build_frame_cache")),
    ("probe the evaluation videos", ("probe.py", "check_eval_videos")),
    ("train epochs (all)", ("train.py", "train_one_epoch")),
    ("  wait for the next batch (decode, collate)", ("dataloader.py", "__next__")),
    ("  forward (model + loss)", ("modeling.py", "forward")),
    ("  backward", ("__init__.py", "backward")),
    ("  gradient clipping", ("clip_grad.py", "clip_grad_norm_")),
    ("  optimizer step", ("optimizer.py", "wrapper")),
    ("validation + final test (evaluate)", ("evaluate.py", "evaluate")),
    ("checkpoint writes (atomic_save)", ("checkpoint.py", "atomic_save")),
    ("loss curves (plot_curves)", ("curves.py", "plot_curves")),
)


def stage_times(stats: pstats.Stats) -> dict:
    """Inclusive seconds per stage; the largest match wins where a name occurs in several files."""
    found = {}
    for (filename, _, func), (_, _, _, cumulative, _) in stats.stats.items():
        for stage, (suffix, name) in STAGES:
            if func == name and filename.endswith(suffix):
                found[stage] = max(found.get(stage, 0.0), cumulative)
    return found


def import_seconds() -> float:
    """Wall time of a fresh interpreter importing main.py's modules (the process start-up every run pays)."""
    start = time.time()
    subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def generate_seconds(folder: str) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "tvr.dataloaders.synthetic", "--output_dir", folder, "--seed", "0"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.time() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=os.path.join(tempfile.gettempdir(), "profile_demo"))
    p.add_argument("--generate", default=None, help="also time generating the synthetic dataset into this folder")
    p.add_argument("--top", type=int, default=0, help="also print the N functions with the most inclusive time")
    p.add_argument("main_args", nargs="*", help="flags for main.py, after `--`")
    args = p.parse_args(argv)
    os.chdir(REPO)

    rows = [("process start-up (main.py --help)", import_seconds())]
    if args.generate:
        rows.append(("generate the synthetic dataset", generate_seconds(args.generate)))

    # main.py is a script at the repository root, not part of the installed package: load it by path
    # (after the start-up timing, which needs a fresh interpreter).
    spec = importlib.util.spec_from_file_location("main", os.path.join(REPO, "main.py"))
    demo_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_main)

    profiler = cProfile.Profile()
    start = time.time()
    values = recipe_values([name for _, name in RECIPE_FLAGS] + ["OMP_NUM_THREADS"])
    torch.set_num_threads(int(values["OMP_NUM_THREADS"]))
    profiler.runcall(demo_main.main, demo_flags(values) + ["--output_dir", args.output_dir] + args.main_args)
    wall = time.time() - start
    stats = pstats.Stats(profiler)
    times = stage_times(stats)
    rows += [(stage, times[stage]) for stage, _ in STAGES if stage in times]

    print(f"flags: {' '.join(args.main_args) or '(recipe only)'}; threads {torch.get_num_threads()}")
    print("| stage | seconds | share of main() |")
    print("|---|---|---|")
    for stage, seconds in rows:
        print(f"| {stage} | {seconds:.1f} | {100 * seconds / wall:.0f} % |")
    if args.top:
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
