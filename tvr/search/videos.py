"""Find the videos under a folder and load each one exactly as training and evaluation do
(same frame choice, decoder and transform), keeping when each sampled frame was taken."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import List

import torch

from ..dataloaders.config import DataConfig
from ..dataloaders.transforms import build_frame_transform, frames_to_tensor
from ..dataloaders.video_reader import read_frames, sample_frame_indices


@dataclass(frozen=True)
class VideoFile:
    key: str  # path relative to the folder, "/"-separated: the video's name in the index
    path: str
    size: int
    mtime_ns: int

    @property
    def signature(self) -> tuple:
        """What tells an unchanged file from a changed one."""
        return (self.size, self.mtime_ns)


def find_videos(root: str, extensions) -> List[VideoFile]:
    """Every file under root (recursively, sorted) whose extension is one of `extensions`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--videos {root}: not a folder")
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() not in exts:
                continue
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            key = os.path.relpath(path, root).replace(os.sep, "/")
            found.append(VideoFile(key, path, st.st_size, st.st_mtime_ns))
    return found


@dataclass
class LoadedVideo:
    video: torch.Tensor  # max_frames x 3 x R x R float32, zero after the real frames
    mask: torch.Tensor  # max_frames long, 1 = real frame
    timestamps: torch.Tensor  # max_frames float32: seconds of each sampled frame (0 on padding)
    duration: float  # seconds (NaN when the decoder reports no frame rate)
    thumbnails: torch.Tensor  # n_real x 3 x R x R uint8: the frames before normalisation


class VideoLoader:
    """Callable path -> LoadedVideo for the data settings a model was trained with."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.transform = build_frame_transform(cfg.input_resolution, mean=cfg.image_mean, std=cfg.image_std,
                                               interpolation=cfg.interpolation, resize_mode=cfg.resize_mode)
        self._index_fn = partial(_indices, video_framerate=cfg.video_framerate, max_frames=cfg.max_frames,
                                 slice_framepos=cfg.slice_framepos)

    def __call__(self, path: str) -> LoadedVideo:
        """Raises VideoDecodeError (naming the file) when no backend can decode it."""
        cfg = self.cfg
        decode_size = self.transform.resize_size if cfg.decode_resize else None
        decoded = read_frames(path, self._index_fn, num_threads=cfg.decode_threads, decode_size=decode_size)
        thumbnails = self.transform.resize_crop(frames_to_tensor(decoded.frames))  # t x 3 x R x R uint8
        frames = self.transform.normalize(thumbnails)  # t x 3 x R x R float32
        t = frames.shape[0]
        video = frames.new_zeros((cfg.max_frames,) + tuple(frames.shape[1:]))
        video[:t] = frames
        mask = torch.zeros(cfg.max_frames, dtype=torch.long)
        mask[:t] = 1
        fps = decoded.fps if decoded.fps and math.isfinite(decoded.fps) and decoded.fps > 0 else None
        timestamps = torch.zeros(cfg.max_frames, dtype=torch.float32)
        if fps:
            timestamps[:t] = torch.as_tensor(decoded.indices, dtype=torch.float32) / fps
        duration = decoded.num_frames / fps if fps else float("nan")
        return LoadedVideo(video, mask, timestamps, float(duration), thumbnails.contiguous())


def _indices(num_frames, fps, *, video_framerate, max_frames, slice_framepos):
    # Module level (not a lambda) so the loader pickles into DataLoader worker processes.
    return sample_frame_indices(num_frames, fps, video_framerate, max_frames, slice_framepos)


def describe_failure(exc: BaseException) -> str:
    """One line for the manifest and the summary."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]

