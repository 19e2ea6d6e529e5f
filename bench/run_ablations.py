"""Run the ablation table on the synthetic demo: one `bash train.sh` per (variant, seed), then one markdown row
per variant with the mean (and spread) over seeds of the test metrics and the temporal-twin metrics.

    python bench/run_ablations.py --seeds 42 43 --variants default loss_sigmoid ... [--out outputs/ablations]

Each row's command is printed beside it, so any row can be re-run by hand. Finished runs are reused
(their eval_results.json is read back), so an interrupted table can simply be restarted.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (environment for train.sh on top of BASE, what the row tests, whether the paper specifies the setting).
# BASE is the paper-faithful base row "qe_on": the demo recipe with query expansion on (padding positions are
# query tokens), both branches, mean-max-sim (mms) with the start token counted, 2 visual expansion tokens,
# normalized temporal input, dual loss; every row changes one setting of it. The demo recipe itself
# (configs/synthetic.sh, row "default") turns query expansion off, because this table says so.
BASE = {"QUERY_EXPANSION": "1"}
VARIANTS = {
    "default": ({"QUERY_EXPANSION": "0"}, "the demo recipe (configs/synthetic.sh): query expansion off, softmax loss",
                "ours (paper: expansion on, sigmoid loss)"),
    "qe_on": ({}, "base of the rows below: the demo recipe with query expansion on", "paper: on"),
    "loss_sigmoid": ({"LOSS": "sigmoid"}, "the paper's sigmoid loss, loss scalars at --lr", "paper"),
    "loss_sigmoid_llr1e-2": ({"LOSS": "sigmoid", "LOSS_LR": "1e-2"}, "sigmoid, --loss_lr 1e-2", "paper loss; lr ours"),
    "loss_sigmoid_llr5e-2": ({"LOSS": "sigmoid", "LOSS_LR": "5e-2"}, "sigmoid, --loss_lr 5e-2", "paper loss; lr ours"),
    "loss_sigmoid_llr1e-1": ({"LOSS": "sigmoid", "LOSS_LR": "1e-1"}, "sigmoid, --loss_lr 1e-1", "paper loss; lr ours"),
    "loss_sigmoid_bias-4": ({"LOSS": "sigmoid", "EXTRA_ARGS": "--init_bias -4"},
                            "sigmoid, bias initialised at -4 (about -log 64, the batch) instead of -10", "paper loss; init ours"),
    "loss_sigmoid_bias-4_llr1e-2": ({"LOSS": "sigmoid", "LOSS_LR": "1e-2", "EXTRA_ARGS": "--init_bias -4"},
                                    "sigmoid, bias initialised at -4, --loss_lr 1e-2", "paper loss; init, lr ours"),
    "frames12_softmax": ({"MAX_FRAMES": "12", "VIDEO_FRAMERATE": "2"}, "12 frames (2 fps)", "paper: 12 frames"),
    "frames12_sigmoid": ({"LOSS": "sigmoid", "LOSS_LR": "1e-1", "MAX_FRAMES": "12", "VIDEO_FRAMERATE": "2"},
                         "12 frames (2 fps), sigmoid, --loss_lr 1e-1", "paper: 12 frames"),
    "single_loss": ({"EXTRA_ARGS": "--dual_loss 0"}, "one loss on s_F + s_V instead of one per branch", "paper: dual"),
    "no_sot": ({"EXTRA_ARGS": "--query_sot 0"}, "start token not a query token", "ours"),
    "raw_temporal_input": ({"EXTRA_ARGS": "--temporal_input raw"}, "temporal encoder reads raw CLS tokens", "ours"),
    "maxsim_no_qe": ({"QUERY_EXPANSION": "0", "EXTRA_ARGS": "--interaction maxsim"},
                     "ColBERT's sum over query tokens, expansion off (compare with the demo recipe's mms row)",
                     "paper: mean"),
    "visual_expansion_0": ({"EXTRA_ARGS": "--visual_expansion 0"}, "no visual expansion tokens", "paper: on"),
    "visual_expansion_4": ({"EXTRA_ARGS": "--visual_expansion 4"}, "4 visual expansion tokens", "ours (count)"),
    "frame_only": ({"EXTRA_ARGS": "--branches frame"}, "frame branch only", "paper: both"),
    "video_only": ({"EXTRA_ARGS": "--branches video"}, "video branch only", "paper: both"),
    "meanp": ({"EXTRA_ARGS": "--meanp 1"}, "CLIP4Clip mean-pooling baseline", "baseline"),
}
COLUMNS = (("t2v", "R1"), ("t2v", "R5"), ("t2v", "MdR"), ("v2t", "R1"), ("temporal", "temporal_R1"),
           ("temporal", "twin_accuracy"))


def command_for(name: str, seed: int, out_root: str) -> tuple:
    env = dict(BASE, **VARIANTS[name][0], SEED=str(seed), OUTPUT_DIR=os.path.join(out_root, f"{name}_s{seed}"))
    shown = " ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in env.items()) + " bash train.sh"
    return env, shown


def run(name: str, seed: int, out_root: str, collect_only: bool = False) -> dict:
    env, shown = command_for(name, seed, out_root)
    results = os.path.join(env["OUTPUT_DIR"], "eval_results.json")
    if not os.path.exists(results):
        if collect_only:
            return {}
        start = time.time()
        subprocess.run(["bash", "train.sh"], cwd=REPO, env=dict(os.environ, **env, OVERWRITE="1"),
                       stdout=subprocess.DEVNULL, check=True)
        print(f"{shown}: {time.time() - start:.0f} s", file=sys.stderr)
    with open(results) as f:
        return json.load(f)


def row(name: str, runs: list, seeds: list) -> str:
    cells = []
    for section, key in COLUMNS:
        values = [r[section][key] for r in runs if section in r]
        if not values:
            cells.append("not run")
            continue
        mean = statistics.mean(values)
        spread = f" ± {statistics.pstdev(values):.1f}" if len(values) > 1 else ""
        cells.append(f"{mean:.1f}{spread}")
    _, what, paper = VARIANTS[name]
    _, shown = command_for(name, seeds[0], "outputs/ablations")
    seeds_run = [str(seed) for seed, r in zip(seeds, runs) if r]
    return f"| {what} | {paper} | {', '.join(seeds_run) or 'none'} | " + " | ".join(cells) + f" | `{shown}` |"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--out", default="outputs/ablations", help="one folder per run below this")
    p.add_argument("--collect_only", action="store_true", help="only read finished runs; the rest show as 'not run'")
    args = p.parse_args(argv)
    print("| variant | setting in the paper | seeds | t2v R@1 | R@5 | MdR | v2t R@1 | temporal R@1 | twin acc. | command (per seed: SEED=...) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        runs = [run(name, seed, args.out, args.collect_only) for seed in args.seeds]
        print(row(name, runs, args.seeds), flush=True)


if __name__ == "__main__":
    main()
