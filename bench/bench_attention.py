"""CPU attention, forward + backward: torch's fused kernel against explicit matrix products, by shape.

Why `module_clip.EXPLICIT_ATTENTION_MAX_LEN` exists and where it sits: the fused kernel
(`scaled_dot_product_attention`) tiles for long sequences and costs more than two matrix products
and a softmax on the short ones this codebase runs on CPUs (frames of a small ViT, captions, video
tokens). Both variants go through `module_clip.attend` and run in interleaved rounds; each reports
its median.

    python bench/bench_attention.py [--rounds 5] [--steps 5] [--threads 2]
"""
import argparse
import statistics
import time

import torch

from tvr.models import module_clip

# (label, N, heads, L, head dim): the demo's towers, ViT-B/32 and ViT-B/16 frames, 77-token text
SHAPES = (
    ("demo vision (384 frames, 17 tokens)", 384, 2, 17, 64),
    ("demo text (64 captions, 15 tokens)", 64, 2, 15, 64),
    ("demo temporal (64 videos, 8 tokens)", 64, 2, 8, 64),
    ("ViT-B/32 frames (96 x 50 tokens)", 96, 12, 50, 64),
    ("text, 77 tokens (96 captions)", 96, 12, 77, 64),
    ("128 tokens (32 sequences)", 32, 12, 128, 64),
    ("ViT-B/16 frames (16 x 197 tokens)", 16, 12, 197, 64),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="timed forward + backward passes per variant and round")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"attention forward + backward on the CPU, {torch.get_num_threads()} threads, ms per pass, "
          f"median of {args.rounds} rounds x {args.steps} passes")
    print(f"{'shape':40s}{'fused':>9s}{'explicit':>10s}{'ratio':>8s}")
    default = module_clip.EXPLICIT_ATTENTION_MAX_LEN
    g = torch.Generator().manual_seed(0)
    try:
        for label, n, h, length, d in SHAPES:
            q, k, v = (torch.randn(n, h, length, d, generator=g).requires_grad_() for _ in range(3))  # N x H x L x Dh
            grad = torch.randn(n, h, length, d, generator=g)
            variants = {"fused": 0, "explicit": 10 ** 9}  # EXPLICIT_ATTENTION_MAX_LEN for each
            times = {name: [] for name in variants}

            def run(max_len: int, steps: int) -> float:
                module_clip.EXPLICIT_ATTENTION_MAX_LEN = max_len
                start = time.perf_counter()
                for _ in range(steps):
                    module_clip.attend(q, k, v).backward(grad)
                return (time.perf_counter() - start) / steps

            for max_len in variants.values():
                run(max_len, 1)  # warm-up
            for _ in range(args.rounds):
                for name, max_len in variants.items():
                    times[name].append(run(max_len, args.steps))
            fused, explicit = (statistics.median(times[name]) * 1e3 for name in variants)
            print(f"{label:40s}{fused:9.2f}{explicit:10.2f}{explicit / fused:8.2f}")
    finally:
        module_clip.EXPLICIT_ATTENTION_MAX_LEN = default
    print(f"training uses explicit products up to {default} positions on the CPU, the fused kernel above that and on GPUs")


if __name__ == "__main__":
    main()
