"""The Python parts of bench/gpu_check.sh (run that script; these are its steps).

    python bench/gpu_check.py require-cuda
    python bench/gpu_check.py autocast --checkpoint RUN/best.pth --json OUT.json [--device cuda]
    python bench/gpu_check.py train-log --log RUN/log.txt --json OUT.json [--label ...]
    python bench/gpu_check.py collect --parts DIR --json RESULT.json

`autocast` evaluates one trained checkpoint three times with the real `evaluate()` (fp32, then
CUDA autocast fp16 and bf16 for the encoders; scoring always runs in fp32) and compares each
score matrix with the fp32 one: the largest and the 99th-percentile absolute difference divided
by the fp32 scores' standard deviation (the spread that ranking sees), the share of queries whose
top-1 video is unchanged, the mean per-query Spearman correlation over all videos, and R@1.
`--device cpu` runs the same code without autocast (every precision equals fp32 there): a dry run
for machines without a GPU.

`train-log` reads main.py's step lines from a log.txt: samples/s over the second half of the
logged steps (the first steps carry start-up and autotuning), and the peak memory the log reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEP_LINE = re.compile(r"epoch (\d+) step (\d+)/(\d+) loss .*\| ([\d.]+) samples/s, peak mem (\d+) MB")
PER_EPOCH_LINE = re.compile(r"training pairs, (\d+) steps per epoch")
RESUME_LINE = re.compile(r"resumed from .* at epoch (\d+), step (\d+)")


def report(out: dict, path) -> None:
    """Print the step's figures as JSON, and also write them to ``path`` when one is given."""
    text = json.dumps(out, indent=1)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text)


def require_cuda(_args) -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}, CUDA build {torch.version.cuda}). Run this on a GPU machine.", file=sys.stderr)
        return 2
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "devices": names}))
    return 0


def _rank_agreement(sim: torch.Tensor, ref: torch.Tensor) -> dict:
    """How much of the fp32 ranking survives: top-1 agreement and mean per-row Spearman."""
    top1 = (sim.argmax(dim=1) == ref.argmax(dim=1)).double().mean().item()

    def ranks(x):  # per-row ranks 0..Nv-1 (ties broken by position; continuous scores rarely tie)
        return x.argsort(dim=1).argsort(dim=1).double()

    a, b = ranks(sim), ranks(ref)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    spearman = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)).mean().item()
    return {"top1_agreement": top1, "mean_spearman": spearman}


def compare_scores(sim: torch.Tensor, ref: torch.Tensor) -> dict:
    """sim vs the fp32 reference, in units of the reference's spread (finite entries only)."""
    finite = torch.isfinite(ref) & torch.isfinite(sim)
    diff = (sim.double() - ref.double()).abs()[finite]
    spread = ref.double()[finite].std().item()
    return {
        "score_std_fp32": spread,
        "max_abs_diff": diff.max().item(),
        "max_abs_diff_over_std": diff.max().item() / spread,
        "p99_abs_diff_over_std": torch.quantile(diff, 0.99).item() / spread if diff.numel() <= 16_000_000 else float("nan"),
        "nonfinite_mismatch": int((torch.isfinite(ref) != torch.isfinite(sim)).sum()),
        **_rank_agreement(sim, ref),
    }


def autocast(args) -> int:
    from tvr.dataloaders import build_eval_dataset
    from tvr.engine.evaluate import evaluate
    from tvr.engine.model_io import load_trained_model
    from tvr.utils.launch import Runtime

    device = torch.device(args.device)
    model, run_cfg = load_trained_model(args.checkpoint, device)
    if args.anno_path:
        run_cfg.data.anno_path, run_cfg.data.video_path = args.anno_path, args.video_path
    eval_data = build_eval_dataset(run_cfg.data, "test", tokenizer=model.clip.tokenizer)
    runtime = Runtime(rank=0, world_size=1, local_rank=0, device=device)
    out = {"checkpoint": os.path.abspath(args.checkpoint), "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "queries": len(eval_data.texts), "videos": len(eval_data.videos), "precisions": {}}
    sims = {}
    for precision in ("fp32", "fp16", "bf16"):
        start = time.perf_counter()
        results, sim = evaluate(model, eval_data, runtime, args.batch_size_val, args.workers, precision)
        sims[precision] = sim.float().cpu()
        out["precisions"][precision] = {"t2v_R1": results["t2v"]["R1"], "v2t_R1": results["v2t"]["R1"],
                                        "eval_seconds": time.perf_counter() - start}
    for precision in ("fp16", "bf16"):
        out["precisions"][precision].update(compare_scores(sims[precision], sims["fp32"]))
    report(out, args.json)
    return 0


def parse_train_log(path: str) -> dict:
    """Steady samples/s and peak memory from main.py's log.

    Each step line's rate is cumulative from the step the epoch (or a resumed run) started at:
    r = (step - start) x batch / seconds. So ``seconds / batch = (step - start) / r`` at every logged
    step, and the rate between two logged steps is their step difference over that time difference.
    ``start`` is epoch x steps-per-epoch, from the trainer's "N steps per epoch" line, or the step a
    "resumed from ... at epoch E, step S" line names for epoch E.
    """
    steps, steps_per_epoch, resumed, epoch, start, segment = [], None, None, None, 0, 0
    with open(path) as f:
        for line in f:
            if m := PER_EPOCH_LINE.search(line):
                steps_per_epoch, resumed, epoch = int(m.group(1)), None, None
            elif m := RESUME_LINE.search(line):
                resumed, epoch = (int(m.group(1)), int(m.group(2))), None
            elif m := STEP_LINE.search(line):
                if steps_per_epoch is None:
                    raise ValueError(f"{path}: a step line comes before the trainer's '... steps per epoch' line")
                if int(m.group(1)) != epoch:
                    epoch = int(m.group(1))
                    start = resumed[1] if resumed and resumed[0] == epoch else epoch * steps_per_epoch
                    segment += 1  # one epoch of one run: one clock
                steps.append({"segment": segment, "step": int(m.group(2)), "start": start,
                              "samples_per_s": float(m.group(4)), "peak_mem_mb": float(m.group(5))})
    if not steps:
        raise ValueError(f"{path}: no training step lines ('... samples/s, peak mem ... MB') found")
    # The second half of the last epoch's logged steps: start-up and autotuning are behind it.
    last = [s for s in steps if s["segment"] == steps[-1]["segment"]]
    done = [s["step"] - s["start"] for s in last]  # steps since the rate started counting
    elapsed_per_batch = [d / s["samples_per_s"] for d, s in zip(done, last)]  # elapsed seconds / global batch
    mid = len(last) // 2
    if len(last) > 1 and elapsed_per_batch[-1] > elapsed_per_batch[mid]:
        steady = (done[-1] - done[mid]) / (elapsed_per_batch[-1] - elapsed_per_batch[mid])
    else:
        steady = last[-1]["samples_per_s"]
    return {"steps_logged": len(steps), "samples_per_s_cumulative": last[-1]["samples_per_s"],
            "samples_per_s_second_half": steady, "peak_mem_mb": max(s["peak_mem_mb"] for s in steps)}


def train_log(args) -> int:
    out = {"label": args.label, "log": os.path.abspath(args.log), **parse_train_log(args.log)}
    eval_json = os.path.join(os.path.dirname(args.log), "eval_results.json")
    if os.path.exists(eval_json):
        with open(eval_json) as f:
            results = json.load(f)
        out["test_t2v"] = results.get("t2v")
    report(out, args.json)
    return 0


def collect(args) -> int:
    """One JSON from the files in --parts: each step's figures (NAME.json) under their name, each
    step's exit status and duration (status_NAME.json) under "status", and the tail of each step's
    output (NAME.txt) under "output_tail"; a file that is not valid JSON is reported as such."""
    result = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
              "status": {}, "output_tail": {}}
    for name in sorted(os.listdir(args.parts)):
        path = os.path.join(args.parts, name)
        stem, ext = os.path.splitext(name)
        with open(path) as f:
            text = f.read()
        if ext == ".txt":
            result["output_tail"][stem] = text[-4000:]
        elif ext == ".json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                value = {"error": f"unreadable JSON: {e}"}
            if stem.startswith("status_"):
                result["status"][stem[len("status_"):]] = value
            else:
                result[stem] = value
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"gpu_check: wrote {args.json}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("require-cuda")
    a = sub.add_parser("autocast")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--anno_path", default=None, help="override the checkpoint's data folders")
    a.add_argument("--video_path", default=None)
    a.add_argument("--device", default="cuda")
    a.add_argument("--batch_size_val", type=int, default=64)
    a.add_argument("--workers", type=int, default=4)
    a.add_argument("--json", default=None)
    t = sub.add_parser("train-log")
    t.add_argument("--log", required=True)
    t.add_argument("--label", default="")
    t.add_argument("--json", default=None)
    c = sub.add_parser("collect")
    c.add_argument("--parts", required=True)
    c.add_argument("--json", required=True)
    args = p.parse_args(argv)
    if args.cmd == "autocast" and (args.anno_path is None) != (args.video_path is None):
        p.error("--anno_path and --video_path go together")
    return {"require-cuda": require_cuda, "autocast": autocast, "train-log": train_log, "collect": collect}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
