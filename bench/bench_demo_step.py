"""One training step of the built-in demo, phase by phase, with and without this codebase's CPU speed-ups.

The demo recipe's shapes (configs/synthetic.sh): scratch:tiny, batch 64, 6 frames of 64 px, 32-token
text fields holding captions of 13-15 tokens (as the synthetic captions are), query expansion off,
softmax loss. The variants share one model and run in interleaved rounds, so a machine that speeds
up or slows down mid-run affects them alike; each phase reports its median over the rounds:

  before        the text tower encodes all 32 positions, AdamW runs torch's per-tensor loop, attention
                runs torch's fused kernel, QuickGELU is computed as CLIP's code writes it
  skip padding  the text tower stops at the batch's longest caption (trailing padding is no query token)
  fused adamw   skip padding + the fused AdamW kernel
  explicit attn fused adamw + attention as explicit matrix products (short CPU sequences)
  now           explicit attn + QuickGELU as silu(1.702 x) / 1.702 (what training uses)

    python bench/bench_demo_step.py [--rounds 5] [--steps 8] [--threads 2]
    python bench/bench_demo_step.py --data data/synthetic [--weights outputs/synthetic_tiny/last.pth]

By default the batch is random pixels and word pieces of the demo's shapes. --data takes real batches of
the synthetic training split instead (frames cached, one batch per step, in turn), --weights starts from a
checkpoint (e.g. the end of a demo run) instead of random weights.
"""
import argparse
import itertools
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader

from tvr.dataloaders import build_train_dataset
from tvr.dataloaders.config import DataConfig
from tvr.models import module_clip
from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import QuickGELU, load_clip
from tvr.utils.checkpoint import load_checkpoint, load_model_weights
from tvr.utils.optim import build_optimizer, build_param_groups
from tvr.utils.sampling import GlobalBatchSampler

from bench_train_step import quick_gelu_as_written  # a sibling script: its folder is on sys.path when run

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


def synthetic_batches(folder: str, resolution: int, count: int) -> list:
    """The first `count` training batches of the synthetic dataset in `folder`, as training draws them."""
    cfg = DataConfig(datatype="msrvtt", anno_path=os.path.join(folder, "anns"), video_path=os.path.join(folder, "videos"),
                     max_words=32, max_frames=6, video_framerate=1.0, input_resolution=resolution, cache_frames=True)
    dataset = build_train_dataset(cfg)
    sampler = GlobalBatchSampler(len(dataset), 64, 0, 1, seed=42)
    sampler.set_epoch(0, 0)
    batches = []
    for batch in DataLoader(dataset, batch_sampler=sampler, num_workers=0):
        batches.append((batch["text_ids"], batch["text_mask"], batch["video"], batch["video_mask"]))
        if len(batches) == count:
            break
    return batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the demo recipe uses 2)")
    p.add_argument("--data", default=None, help="a synthetic dataset folder: real training batches instead of random ones")
    p.add_argument("--weights", default=None, help="a checkpoint to start from instead of random weights")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=6, query_expansion=False, loss="softmax"))
    if args.weights:
        load_model_weights(model, load_checkpoint(args.weights)["model"], strict=True)
    model.train()
    if args.data:
        batches = synthetic_batches(args.data, model.clip.input_resolution, count=16)
    else:
        batches = [demo_batch(64, 6, 32, model.clip.input_resolution, torch.Generator().manual_seed(0))]
    next_batch = itertools.cycle(batches).__next__  # one batch per step, in turn
    # Learning rate 0: every step computes the same work on the same weights. Trained on random
    # pixels at the demo's rate, the model drifts within a few dozen steps into a state that real
    # training does not reach, where the fused attention kernel meets denormal numbers and slows
    # down (flush-to-zero removes the difference): 395 against 337 ms per step for the attention
    # variants, where real batches (--data) show 1-2 %. Figures measured that way overstated that change.
    groups = build_param_groups(model, 0.0, 1.0, 0.2)
    explicit = module_clip.EXPLICIT_ATTENTION_MAX_LEN
    gelu = QuickGELU.forward
    variants = {  # name -> (text padding skipped, optimizer, longest sequence with explicit attention, QuickGELU)
        "before": (False, build_optimizer(groups, fused=False), 0, quick_gelu_as_written),
        "skip padding": (True, build_optimizer(groups, fused=False), 0, quick_gelu_as_written),
        "fused adamw": (True, build_optimizer(groups), 0, quick_gelu_as_written),
        "explicit attn": (True, build_optimizer(groups), explicit, quick_gelu_as_written),
        "now": (True, build_optimizer(groups), explicit, gelu),
    }
    times = {name: {phase: [] for phase in PHASES} for name in variants}

    def step(skip: bool, optimizer, explicit_max_len: int, gelu_forward, record=None):
        model.clip.text_padding_skippable = skip
        module_clip.EXPLICIT_ATTENTION_MAX_LEN = explicit_max_len
        QuickGELU.forward = gelu_forward
        batch = next_batch()
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

    for variant in variants.values():
        step(*variant)  # warm-up, and the optimizer's state is allocated
    for _ in range(args.rounds):
        for name, variant in variants.items():
            record = {phase: [] for phase in PHASES}
            for _ in range(args.steps):
                step(*variant, record=record)
            for phase in PHASES:
                times[name][phase].append(statistics.mean(record[phase]))

    source = f"{len(batches)} real batches of {args.data}" if args.data else "a random batch"
    print(f"demo training step (scratch:tiny, batch 64 x 6 frames, 32-token fields with 13-15-token captions), "
          f"{source}, weights {args.weights or 'random'}, {torch.get_num_threads()} threads; "
          f"ms per step, median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':14s}" + "".join(f"{phase:>11s}" for phase in PHASES) + f"{'total':>9s}{'samples/s':>11s}")
    for name in variants:
        medians = [statistics.median(times[name][phase]) * 1e3 for phase in PHASES]
        total = sum(medians)
        print(f"{name:14s}" + "".join(f"{m:11.1f}" for m in medians) + f"{total:9.1f}{64 / total * 1e3:11.1f}")


if __name__ == "__main__":
    main()
