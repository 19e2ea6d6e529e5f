"""Overhead of Video-ColBERT's training step over CLIP's two encoders alone.

Times, on the same inputs and random ViT-B/32-shaped weights:
  bare:  forward + backward of clip.encode_image (every frame) and clip.encode_text (pooled)
  model: forward + backward of VideoColBERT (token-wise text output, temporal encoder, visual
         expansion, MeanMaxSim for both branches, dual sigmoid loss)
and reports model / bare (target: at most 1.15). The optimizer step is timed separately since
the bare baseline has no optimizer of its own. Then the memory autograd keeps for the backward
pass of one model forward (activations only, parameters excluded, each storage counted once), per
training sample, with QuickGELU as this codebase computes it and as CLIP's code writes it.

    python bench/bench_train_step.py [--encoder scratch:ViT-B/32] [--batch 4] [--frames 12] [--repeats 3]
"""
import argparse
import statistics
import time

import torch

from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import QuickGELU, load_clip
from tvr.utils.optim import build_optimizer, build_param_groups


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in interleaved rounds (a machine that slows down mid-run
    slows every function alike), after one warm-up call each."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_activation_bytes(model: torch.nn.Module, forward) -> int:
    """Bytes of the tensors autograd saves during ``forward()`` for the backward pass, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def quick_gelu_as_written(self, x):
    """QuickGELU as CLIP's code writes it: autograd keeps both x and the sigmoid."""
    return x * torch.sigmoid(1.702 * x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="scratch:ViT-B/32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--words", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = VideoColBERT(load_clip(args.encoder), ModelConfig(max_frames=args.frames)).train()
    clip = model.clip
    res = clip.input_resolution
    video = torch.randn(args.batch, args.frames, 3, res, res)  # B x T x 3 x R x R
    video_mask = torch.ones(args.batch, args.frames, dtype=torch.long)
    text_ids = torch.randint(1, 49000, (args.batch, args.words))
    text_ids[:, -1] = 49407  # EOT, the largest id, where CLIP pools
    text_mask = torch.ones_like(text_ids)

    def bare_step():
        clip.zero_grad(set_to_none=True)
        loss = clip.encode_image(video.flatten(0, 1)).sum() + clip.encode_text(text_ids).sum()
        loss.backward()

    def model_step():
        model.zero_grad(set_to_none=True)
        loss, _ = model(text_ids, text_mask, video, video_mask)
        loss.backward()

    optimizer = build_optimizer(build_param_groups(model, 1e-4, 1e-3, 0.2))

    def optimizer_step():
        optimizer.step()

    medians = timed({"bare": bare_step, "model": model_step, "optimizer": optimizer_step}, args.repeats)
    bare, full, opt = medians["bare"], medians["model"], medians["optimizer"]
    print(f"encoder {args.encoder}, batch {args.batch} x {args.frames} frames at {res}px, {args.words} words, "
          f"{torch.get_num_threads()} threads, device cpu")
    print(f"bare CLIP encoders forward+backward: {bare:.3f} s")
    print(f"VideoColBERT forward+backward:       {full:.3f} s  (ratio {full / bare:.3f}, target <= 1.15)")
    print(f"AdamW step over all parameters:      {opt:.3f} s")

    def forward():
        return model(text_ids, text_mask, video, video_mask)

    now = saved_activation_bytes(model, forward)
    ours = QuickGELU.forward
    QuickGELU.forward = quick_gelu_as_written
    try:
        written = saved_activation_bytes(model, forward)
    finally:
        QuickGELU.forward = ours
    print(f"activations saved for backward, per sample (float32): {now / args.batch / 2**20:.1f} MiB; with "
          f"QuickGELU as CLIP writes it {written / args.batch / 2**20:.1f} MiB ({1 - now / written:.1%} less)")


if __name__ == "__main__":
    main()
