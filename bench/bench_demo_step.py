"""One training step of the built-in demo, phase by phase, with and without this codebase's CPU speed-ups.

The demo recipe's shapes (configs/synthetic.sh): scratch:tiny, batch 64, 6 frames of 64 px, 32-token
text fields holding captions of 13-15 tokens (as the synthetic captions are), query expansion off,
softmax loss. Three variants share one model and run in interleaved rounds, so a machine that speeds
up or slows down mid-run affects them alike; each phase reports its median over the rounds:

  before        the text tower encodes all 32 positions, AdamW runs torch's per-tensor loop
  skip padding  the text tower stops at the batch's longest caption (trailing padding is no query token)
  now           skip padding + the fused AdamW kernel (what training uses)

    python bench/bench_demo_step.py [--rounds 5] [--steps 8] [--threads 2]
"""
import argparse
import statistics
import time

import torch

from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import load_clip
from tvr.utils.optim import build_optimizer, build_param_groups

PHASES = ("forward", "backward", "clip", "optimizer")


def demo_batch(batch: int, frames: int, words: int, resolution: int, generator: torch.Generator):
    video = torch.randn(batch, frames, 3, resolution, resolution, generator=generator)  # B x T x 3 x R x R
    video_mask = torch.ones(batch, frames, dtype=torch.long)  # B x T
    lengths = torch.where(torch.arange(batch) % 3 == 2, 15, 13)  # SOT .. EOT, as the synthetic captions
    text_ids = torch.randint(1, 49000, (batch, words), generator=generator)  # B x L
    text_mask = (torch.arange(words) < lengths[:, None]).long()  # B x L
    text_ids[torch.arange(batch), lengths - 1] = 49407  # EOT, CLIP's largest id
    text_ids[text_mask == 0] = 0
    return text_ids, text_mask, video, video_mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo recipe uses 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=6, query_expansion=False, loss="softmax"))
    model.train()
    batch = demo_batch(64, 6, 32, model.clip.input_resolution, torch.Generator().manual_seed(0))
    groups = build_param_groups(model, 1e-3, 1.0, 0.2)
    variants = {  # name -> (text padding skipped, optimizer)
        "before": (False, build_optimizer(groups, fused=False)),
        "skip padding": (True, build_optimizer(groups, fused=False)),
        "now": (True, build_optimizer(groups)),
    }
    times = {name: {phase: [] for phase in PHASES} for name in variants}

    def step(skip: bool, optimizer, record=None):
        model.clip.text_padding_skippable = skip
        t0 = time.perf_counter()
        loss, _ = model(*batch)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if record is not None:
            for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                record[phase].append(seconds)

    for skip, optimizer in variants.values():
        step(skip, optimizer)  # warm-up, and the optimizer's state is allocated
    for _ in range(args.rounds):
        for name, (skip, optimizer) in variants.items():
            record = {phase: [] for phase in PHASES}
            for _ in range(args.steps):
                step(skip, optimizer, record)
            for phase in PHASES:
                times[name][phase].append(statistics.mean(record[phase]))

    print(f"demo training step (scratch:tiny, batch 64 x 6 frames, 32-token fields with 13-15-token captions), "
          f"{torch.get_num_threads()} threads; ms per step, median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':14s}" + "".join(f"{phase:>11s}" for phase in PHASES) + f"{'total':>9s}{'samples/s':>11s}")
    for name in variants:
        medians = [statistics.median(times[name][phase]) * 1e3 for phase in PHASES]
        total = sum(medians)
        print(f"{name:14s}" + "".join(f"{m:11.1f}" for m in medians) + f"{total:9.1f}{64 / total * 1e3:11.1f}")


if __name__ == "__main__":
    main()
