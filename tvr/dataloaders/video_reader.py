"""Frame selection and decoding.

`sample_frame_indices` is a pure function of the video's frame count and frame rate, so the
chosen frames can be checked independently of any decoder. `read_frames` decodes exactly those
frames: decord's `get_batch` first (it seeks, so only the needed GOPs are decoded), OpenCV as a
fallback for files decord cannot open or seek. When both fail it raises `VideoDecodeError`
naming the file: a loader must never hand out silent all-zero frames.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video could not be decoded by any backend. `path` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path = path
        self.reason = reason


def frame_stride(native_fps: float, video_framerate: float) -> int:
    """Native-frame stride for sampling at `video_framerate` fps.

    stride = max(1, round(native_fps / video_framerate)), rounding halves up (12.5 -> 13) so
    the result does not depend on banker's rounding. Unknown fps (0, NaN) or a non-positive
    video_framerate mean "every frame".
    """
    if not video_framerate or video_framerate <= 0:
        return 1
    if not native_fps or not math.isfinite(native_fps) or native_fps <= 0:
        return 1
    return max(1, int(math.floor(native_fps / video_framerate + 0.5)))


def sample_frame_indices(num_frames: int, native_fps: float, video_framerate: float,
                         max_frames: int, slice_framepos: int = 2,
                         jitter: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Indices (into the decoded native frames) of the frames to keep, in temporal order.

    Candidates are 0, s, 2s, ... < num_frames with s = frame_stride(native_fps, video_framerate).
    With more than `max_frames` candidates, `slice_framepos` keeps the first (0), the last (1) or
    `max_frames` uniformly spread ones (2: np.linspace over the candidate positions, rounded).

    `jitter` (training-time augmentation): values in [0, 1), one per kept frame (extra values are
    ignored). Kept frame k then moves to start_k + floor(u_k * (end_k - start_k)) inside its
    segment [start_k, end_k): from the chosen candidate up to the next chosen candidate (for the
    last one, up to one stride later, clipped to the video). Without jitter a frame is its
    segment's first frame.
    """
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    stride = frame_stride(native_fps, video_framerate)
    candidates = np.arange(0, num_frames, stride, dtype=np.int64)
    if len(candidates) > max_frames:
        if slice_framepos == 0:
            chosen = candidates[:max_frames]
        elif slice_framepos == 1:
            chosen = candidates[-max_frames:]
        elif slice_framepos == 2:
            pos = np.round(np.linspace(0, len(candidates) - 1, num=max_frames)).astype(np.int64)
            chosen = candidates[pos]
        else:
            raise ValueError(f"slice_framepos must be 0, 1 or 2, got {slice_framepos}")
    else:
        chosen = candidates
    if jitter is None:
        return chosen.copy()
    u = np.asarray(jitter, dtype=np.float64)[: len(chosen)]
    if len(u) < len(chosen):
        raise ValueError(f"need {len(chosen)} jitter values, got {len(u)}")
    ends = np.empty_like(chosen)
    ends[:-1] = chosen[1:]
    ends[-1] = min(num_frames, int(chosen[-1]) + stride)
    widths = ends - chosen  # >= 1 because chosen is strictly increasing
    offsets = np.minimum(np.floor(u * widths).astype(np.int64), widths - 1)
    return chosen + np.maximum(offsets, 0)


@dataclass
class DecodedFrames:
    """Decoded RGB frames and where they came from."""
    frames: np.ndarray  # T x H x W x 3 uint8, RGB
    indices: np.ndarray  # T native frame indices
    num_frames: int  # frames in the file (as the backend counted them)
    fps: float  # native frame rate reported by the backend
    backend: str  # "decord" or "opencv"


IndexFn = Callable[[int, float], np.ndarray]


def _read_decord(path: str, index_fn: IndexFn, num_threads: int) -> DecodedFrames:
    import decord  # imported lazily: optional at import time, and keeps import side-effect free

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
    num_frames = len(vr)
    fps = float(vr.get_avg_fps())
    indices = index_fn(num_frames, fps)
    if len(indices) == 0:
        raise RuntimeError("decord found no frames")
    frames = vr.get_batch(indices.tolist()).asnumpy()
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise RuntimeError(f"decord returned frames of shape {frames.shape} for {len(indices)} indices")
    return DecodedFrames(frames, indices, num_frames, fps, "decord")


def _opencv_count_frames(path: str) -> int:
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def _opencv_grab(path: str, indices: np.ndarray) -> list[np.ndarray]:
    """Decode sequentially (OpenCV's seeking is not frame-exact) and keep the wanted frames."""
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise RuntimeError("OpenCV cannot open the file")
    try:
        wanted = {}
        for pos, idx in enumerate(indices.tolist()):
            wanted.setdefault(idx, []).append(pos)
        out: list[np.ndarray | None] = [None] * len(indices)
        last = int(indices.max())
        for frame_no in range(last + 1):
            if not cap.grab():
                break
            if frame_no in wanted:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                for pos in wanted[frame_no]:
                    out[pos] = rgb
        if any(f is None for f in out):
            return []  # ran out of frames before the last wanted one
        return out
    finally:
        cap.release()


def _read_opencv(path: str, index_fn: IndexFn) -> DecodedFrames:
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise RuntimeError("OpenCV cannot open the file")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cap.release()
    # First trust the container's frame count; when it is missing or too high (the selected frames
    # run past the end), count the frames for real and choose again.
    for num_frames in (header_count, None):
        if num_frames is None or num_frames <= 0:
            num_frames = _opencv_count_frames(path)
        if num_frames <= 0:
            raise RuntimeError("OpenCV found no frames")
        indices = index_fn(num_frames, fps)
        frames = _opencv_grab(path, indices)
        if frames:
            break
    else:
        raise RuntimeError("OpenCV could not decode the selected frames")
    return DecodedFrames(np.stack(frames), indices, num_frames, fps, "opencv")


def read_frames(path: str, index_fn: IndexFn, num_threads: int = 1,
                backends: Sequence[str] = ("decord", "opencv")) -> DecodedFrames:
    """Decode the frames `index_fn(num_frames, fps)` picks, trying each backend in turn.

    index_fn must be deterministic (draw any jitter before calling) because the OpenCV path may
    call it again once it has counted the frames itself.
    """
    errors = []
    for backend in backends:
        try:
            if backend == "decord":
                result = _read_decord(path, index_fn, num_threads)
            elif backend == "opencv":
                result = _read_opencv(path, index_fn)
            else:
                raise ValueError(f"unknown video backend {backend!r}")
        except Exception as exc:  # any backend failure: try the next one, keep the reason
            errors.append(f"{backend}: {type(exc).__name__}: {exc}".strip())
            continue
        if errors:
            logger.debug("decoded %s with %s after: %s", path, backend, "; ".join(errors))
        return result
    raise VideoDecodeError(path, "; ".join(errors) if errors else "no backend tried")
