"""Frame selection and decoding.

`sample_frame_indices` is a pure function of the video's frame count and frame rate, so the
chosen frames can be checked independently of any decoder. `read_frames` decodes exactly those
frames. decord opens the file (frame count, frame rate, key frames); then the frames are decoded
either by decord's `get_batch` (it seeks, so only the needed GOPs are decoded) or, when that would
decode about as many frames anyway, sequentially by OpenCV in the calling thread, which skips
decord's per-frame hand-over between threads (up to 6x less CPU on small videos; same pixels on
every file we checked, see tests). OpenCV is also the fallback for files decord cannot open or
seek. When every backend fails it raises `VideoDecodeError` naming the file: a loader must never
hand out silent all-zero frames.

Decode-time resizing (`decode_size`): for MP4/MOV files whose frame size the header gives, decord
can scale while it converts to RGB (FFmpeg's swscale, bilinear), which skips the full-size RGB
frames and most of the resize. Pixels then differ slightly from resizing full frames (bounds in
tests/test_video_reader.py and the README).
"""
from __future__ import annotations

import logging
import math
import os
import struct
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
    backend: str  # library that decoded the pixels: "decord" or "opencv"
    sequential: bool = False  # decoded front to back (OpenCV) instead of by seeking (decord)
    resized: bool = False  # scaled while decoding (decode_size); else full-size frames


IndexFn = Callable[[int, float], np.ndarray]
SizeFn = Callable[[int, int], tuple[int, int]]  # (height, width) -> (height, width) to decode at

# Sequential decoding is chosen while it decodes at most this factor more frames than decord's
# seeking would, counting each seek as SEEK_COST_FRAMES frames (decord restarts its decoder thread on
# every seek). Calibrated on the test clips, 64x64 to 1280x720: see bench/bench_loader.py.
SEQUENTIAL_SLACK = 1.25
SEEK_COST_FRAMES = 8
# Decode-time resizing only when it at least halves the pixels: for milder reductions swscale's
# scaled path costs about what it saves (measured on 640x272 -> 527x224).
DECODE_RESIZE_MAX_AREA = 0.5


# ----------------------------------------------------------------------------- cost model
def seek_work(indices: np.ndarray, key_indices: Sequence[int]) -> tuple[int, int]:
    """(frames decoded, seeks) when decord's get_batch fetches `indices` (ascending).

    decord keeps decoding forward inside the current GOP and seeks to the key frame before an index
    in another GOP (or behind the current position), decoding from there.
    """
    keys = np.asarray(sorted(key_indices) or [0], dtype=np.int64)
    frames = seeks = 0
    current = 0  # next frame the decoder would return
    for idx in np.asarray(indices, dtype=np.int64).tolist():
        key = int(keys[max(0, np.searchsorted(keys, idx, side="right") - 1)])
        current_key = int(keys[max(0, np.searchsorted(keys, current, side="right") - 1)])
        if key != current_key or idx < current:
            seeks += 1
            frames += idx - key + 1
        else:
            frames += idx - current + 1
        current = idx + 1
    return frames, seeks


def prefer_sequential(indices: np.ndarray, key_indices: Sequence[int]) -> bool:
    """Whether decoding frames 0..max(indices) in order is cheaper than seeking to each."""
    if len(indices) == 0:
        return False
    frames, seeks = seek_work(indices, key_indices)
    return int(np.max(indices)) + 1 <= SEQUENTIAL_SLACK * (frames + SEEK_COST_FRAMES * seeks)


# ----------------------------------------------------------------------------- MP4 header probe
_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
_IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _boxes(f, end: int):
    """Yield (type, payload start, payload end) of the ISO-BMFF boxes from f's position up to end."""
    while f.tell() + 8 <= end:
        start = f.tell()
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            return
        yield kind, start + header, start + size
        f.seek(start + size)


def probe_frame_size(path: str) -> tuple[int, int] | None:
    """(height, width) of the only video track of an MP4/MOV file, read from its header; else None.

    Reads a few hundred bytes (the sample description of the track), never decodes. None for other
    containers, several video tracks, a rotation matrix or anything unexpected: callers then decode
    at full size, so a wrong guess can never distort frames.
    """
    try:
        with open(path, "rb") as f:
            sizes = []

            def walk(end: int, track: dict) -> None:
                for kind, lo, hi in _boxes(f, end):
                    if kind in _CONTAINER_BOXES:
                        sub = {} if kind == b"trak" else track
                        walk(hi, sub)
                        if kind == b"trak" and sub.get("video"):
                            sizes.append(sub.get("size") if sub.get("upright") else None)
                        f.seek(hi)
                    elif kind == b"tkhd":
                        version = f.read(1)[0]
                        f.seek(lo + (52 if version == 1 else 40))
                        track["upright"] = struct.unpack(">9i", f.read(36)) == _IDENTITY
                    elif kind == b"hdlr":
                        f.seek(lo + 8)
                        track["video"] = f.read(4) == b"vide"
                    elif kind == b"stsd":
                        # version/flags and entry count, the first sample entry's box header, then
                        # 24 bytes of a visual sample entry before its width and height
                        f.seek(lo + 8 + 8 + 24)
                        width, height = struct.unpack(">HH", f.read(4))
                        track["size"] = (height, width) if width and height else None

            walk(os.fstat(f.fileno()).st_size, {})
    except (OSError, struct.error, IndexError):
        return None
    if len(sizes) != 1 or sizes[0] is None:
        return None
    return sizes[0]


def decode_size_for(path: str, decode_size: SizeFn | None) -> tuple[int, int] | None:
    """(height, width) to decode `path` at, or None for full size (see DECODE_RESIZE_MAX_AREA)."""
    if decode_size is None:
        return None
    native = probe_frame_size(path)
    if native is None:
        return None
    h, w = decode_size(*native)
    if h < 1 or w < 1 or h * w > DECODE_RESIZE_MAX_AREA * native[0] * native[1]:
        return None
    return h, w


# ----------------------------------------------------------------------------- backends
def _read_decord(path: str, index_fn: IndexFn, num_threads: int, decode_size: SizeFn | None = None,
                 sequential: bool = True) -> DecodedFrames:
    import decord  # imported lazily: optional at import time, and keeps import side-effect free

    target = decode_size_for(path, decode_size)
    h, w = target if target is not None else (-1, -1)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=num_threads)
    num_frames = len(vr)
    fps = float(vr.get_avg_fps())
    indices = index_fn(num_frames, fps)
    if len(indices) == 0:
        raise RuntimeError("decord found no frames")
    if sequential and prefer_sequential(indices, vr.get_key_indices()):
        try:
            frames = _opencv_grab(path, indices, num_threads)
        except Exception as exc:  # OpenCV cannot read what decord can: let decord seek
            logger.debug("OpenCV front-to-back decoding of %s failed (%s); decord seeks instead", path, exc)
            frames = []
        if frames:  # else OpenCV ran out of frames early: let decord seek instead
            return DecodedFrames(np.stack(frames), indices, num_frames, fps, "opencv", sequential=True)
    frames = vr.get_batch(indices.tolist()).asnumpy()
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise RuntimeError(f"decord returned frames of shape {frames.shape} for {len(indices)} indices")
    return DecodedFrames(frames, indices, num_frames, fps, "decord", resized=target is not None)


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


def _opencv_capture(path: str, num_threads: int = 0):
    """cv2.VideoCapture with FFmpeg using `num_threads` decoding threads (0: OpenCV's default)."""
    import cv2

    if num_threads > 0:
        return cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, num_threads])
    return cv2.VideoCapture(path)


def _opencv_grab(path: str, indices: np.ndarray, num_threads: int = 0) -> list[np.ndarray]:
    """Decode sequentially (OpenCV's seeking is not frame-exact) and keep the wanted frames."""
    import cv2

    cap = _opencv_capture(path, num_threads)
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


def _read_opencv(path: str, index_fn: IndexFn, num_threads: int = 0) -> DecodedFrames:
    import cv2

    cap = _opencv_capture(path, num_threads)
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
        frames = _opencv_grab(path, indices, num_threads)
        if frames:
            break
    else:
        raise RuntimeError("OpenCV could not decode the selected frames")
    return DecodedFrames(np.stack(frames), indices, num_frames, fps, "opencv")


def read_frames(path: str, index_fn: IndexFn, num_threads: int = 1,
                backends: Sequence[str] = ("decord", "opencv"), decode_size: SizeFn | None = None,
                sequential: bool = True) -> DecodedFrames:
    """Decode the frames `index_fn(num_frames, fps)` picks, trying each backend in turn.

    index_fn must be deterministic (draw any jitter before calling) because the OpenCV path may
    call it again once it has counted the frames itself. num_threads: decoding threads (0: the
    library's choice). decode_size: (height, width) -> size to decode at (decord, MP4/MOV only, when
    it at least halves the pixels); the frames may then be smaller than the video. sequential:
    allow decoding front to back with OpenCV when that is cheaper than decord's seeking.
    """
    errors = []
    for backend in backends:
        try:
            if backend == "decord":
                result = _read_decord(path, index_fn, num_threads, decode_size, sequential)
            elif backend == "opencv":
                result = _read_opencv(path, index_fn, num_threads)
            else:
                raise ValueError(f"unknown video backend {backend!r}")
        except Exception as exc:  # any backend failure: try the next one, keep the reason
            errors.append(f"{backend}: {type(exc).__name__}: {exc}".strip())
            continue
        if errors:
            logger.debug("decoded %s with %s after: %s", path, backend, "; ".join(errors))
        return result
    raise VideoDecodeError(path, "; ".join(errors) if errors else "no backend tried")
