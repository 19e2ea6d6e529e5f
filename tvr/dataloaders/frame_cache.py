"""Decode each video of a split once per run instead of once per epoch (`--cache_frames`).

DataLoader workers are separate processes, so a per-worker memo would be lost every epoch. Instead
the split is decoded once, up front, by a pool of worker processes, and the resized uint8 frames
(before normalisation: 4x smaller than floats) go into ONE tensor in shared memory that every
later worker reads without copying. Items are then normalised from the cache; the result is
byte-identical to decoding (tests/test_frame_cache.py).

With frame jitter every frame a jittered draw can pick is cached (each sampled segment whole), so
jitter still works; that costs up to `stride` times the memory. The cache refuses to start, naming
the flag and the sizes, when its estimate exceeds the memory budget (half the available memory).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .video_reader import VideoDecodeError, sample_frame_indices

logger = logging.getLogger(__name__)

# Just below 1: the last frame of every jitter segment.
_TOP = float(np.nextafter(1.0, 0.0))


@dataclass
class FrameCache:
    """Resized uint8 frames of every video of a split, in one shared-memory tensor."""
    frames: torch.Tensor  # F x 3 x R x R uint8: the videos' frames one after another
    offsets: torch.Tensor  # N+1 int64: video v owns frames[offsets[v]:offsets[v + 1]]
    indices: torch.Tensor  # F int64: native frame index of each cached frame (ascending per video)
    num_frames: torch.Tensor  # N int64: frames in the file, as the decoder counted them
    fps: torch.Tensor  # N float64: native frame rate
    errors: dict[int, str] = field(default_factory=dict)  # video -> why it could not be decoded

    def get(self, video: int, index_fn: Callable[[int, float], np.ndarray], path: str) -> torch.Tensor:
        """uint8 T x 3 x R x R: the cached frames index_fn picks. Raises VideoDecodeError as decoding would."""
        if video in self.errors:
            raise VideoDecodeError(path, self.errors[video])
        lo, hi = int(self.offsets[video]), int(self.offsets[video + 1])
        # The bookkeeping runs in NumPy (views of the shared tensors): on a handful of indices its
        # calls cost a fraction of torch's per-op dispatch, and this runs once per training sample.
        want = np.asarray(index_fn(int(self.num_frames[video]), float(self.fps[video])), dtype=np.int64)
        have = self.indices[lo:hi].numpy()
        pos = np.searchsorted(have, want).clip(max=max(0, hi - lo - 1))
        if len(want) == 0 or hi == lo or not np.array_equal(have[pos], want):
            raise RuntimeError(f"frame cache: frames {want.tolist()} of {path} were not cached "
                               f"(cached: {have.tolist()[:8]}...); the sampling settings changed after the cache was built")
        # index_select copies whole frames; fancy indexing (frames[rows]) copies byte by byte, 3x slower
        return self.frames.index_select(0, torch.from_numpy(pos + lo))

    @property
    def nbytes(self) -> int:
        return self.frames.numel()


def frames_to_cache(num_frames: int, fps: float, *, video_framerate: float, max_frames: int,
                    slice_framepos: int, jitter: bool) -> np.ndarray:
    """Native indices to cache: the sampled frames, or with jitter every frame of every segment."""
    chosen = sample_frame_indices(num_frames, fps, video_framerate, max_frames, slice_framepos)
    if not jitter or len(chosen) == 0:
        return chosen
    last = sample_frame_indices(num_frames, fps, video_framerate, max_frames, slice_framepos,
                                jitter=np.full(max_frames, _TOP))
    return np.arange(int(chosen[0]), int(last[-1]) + 1, dtype=np.int64)


class _DecodeVideos(Dataset):
    """Item v: the frames of video v to cache (uint8 T x 3 x R x R) or the reason it failed."""

    def __init__(self, split, jitter: bool):
        self.split, self.jitter = split, jitter

    def __len__(self) -> int:
        return len(self.split.video_paths)

    def __getitem__(self, v: int) -> dict:
        cfg = self.split.cfg
        found = {}

        def index_fn(num_frames, fps):
            found.update(num_frames=num_frames, fps=fps)
            return frames_to_cache(num_frames, fps, video_framerate=cfg.video_framerate, max_frames=cfg.max_frames,
                                   slice_framepos=cfg.slice_framepos, jitter=self.jitter)

        try:
            frames = self.split.decode_frames(v, index_fn)
        except VideoDecodeError as exc:
            return {"video": v, "error": exc.reason}
        indices = np.asarray(index_fn(found["num_frames"], found["fps"]), dtype=np.int64)
        # NumPy arrays travel back from the worker by value, in the same pickle as the rest of the
        # item. A tensor would travel as a shared-memory file handed over through a socket, which
        # costs more than the copy for frames this small (the demo's train split: 8.4 s -> 3.0 s).
        return {"video": v, "frames": frames.contiguous().numpy(), "indices": indices,
                "num_frames": found["num_frames"], "fps": found["fps"]}


def _unchanged(item: dict) -> dict:
    """The cache loader's collate: keep the worker's NumPy arrays (the default turns them into tensors
    inside the worker, which then travel as shared memory)."""
    return item


def memory_budget() -> int:
    """Half of the memory the kernel reports available (8 GiB when it cannot tell)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 << 30


def build_frame_cache(split, jitter: bool = False, workers: int | None = None,
                      max_bytes: int | None = None) -> FrameCache:
    """Decode every video of `split` (a RetrievalSplit) once; see the module docstring."""
    cfg = split.cfg
    n = len(split.video_paths)
    r = cfg.input_resolution
    budget = memory_budget() if max_bytes is None else max_bytes
    estimate = n * cfg.max_frames * 3 * r * r  # without jitter: at most max_frames per video
    if not jitter and estimate > budget:
        raise ValueError(f"--cache_frames: {n} videos x {cfg.max_frames} frames x 3 x {r} x {r} need "
                         f"{estimate / 2**30:.1f} GiB, more than the cache's budget of {budget / 2**30:.1f} GiB "
                         f"(half the available memory); run without --cache_frames")
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    start = time.time()
    loader = DataLoader(_DecodeVideos(split, jitter), batch_size=None, num_workers=workers if n > 1 else 0,
                        collate_fn=_unchanged)
    chunks: list[torch.Tensor] = [torch.zeros(0, 3, r, r, dtype=torch.uint8)] * n
    indices: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)] * n
    num_frames = torch.zeros(n, dtype=torch.int64)
    fps = torch.zeros(n, dtype=torch.float64)
    errors: dict[int, str] = {}
    total = 0
    for item in loader:
        v = item["video"]
        if "error" in item:
            errors[v] = item["error"]
            continue
        chunks[v], indices[v] = torch.from_numpy(item["frames"]), torch.from_numpy(item["indices"])
        num_frames[v], fps[v] = item["num_frames"], item["fps"]
        total += chunks[v].numel()
        if total > budget:
            raise ValueError(f"--cache_frames: the decoded frames passed the cache's budget of {budget / 2**30:.1f} GiB "
                             f"(half the available memory) before the last video; frame jitter caches whole segments. "
                             f"Run without --cache_frames or without --frame_jitter")
    counts = torch.tensor([len(c) for c in chunks], dtype=torch.int64)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    frames = torch.cat(chunks).share_memory_()  # F x 3 x R x R
    cache = FrameCache(frames, offsets, torch.cat(indices), num_frames, fps, errors)
    logger.info("frame cache (%s): %d videos, %d frames, %.1f MiB in %.1f s%s", split.split, n, len(frames),
                cache.nbytes / 2**20, time.time() - start, f"; {len(errors)} failed to decode" if errors else "")
    return cache
