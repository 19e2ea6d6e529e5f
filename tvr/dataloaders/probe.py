"""Start-up check that every evaluation video decodes.

Without it, an unreadable validation or test video is found only when evaluation reaches it, after
a whole training epoch. `probe_videos` decodes, in parallel, exactly the frames evaluation will
sample (the same `read_frames` call as the loader, OpenCV fallback included, so a pass here means
the loader will pass too) and returns every failure at once. Passing videos are remembered in a
JSON cache keyed by path, size, modification time and sampling settings, so a resumed run does not
probe them again. `check_eval_videos` turns failures into one error (or, with
allow_decode_errors, one warning); for a split whose frames are cached it takes the failures the
cache found while decoding, instead of decoding those videos a second time.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Sequence

from tqdm import tqdm

from .config import DataConfig
from .video_reader import VideoDecodeError, read_frames, sample_frame_indices

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


class UndecodableVideosError(RuntimeError):
    """Some evaluation videos cannot be decoded; `failures` lists (path, reason) for each."""

    def __init__(self, message: str, failures: list[tuple[str, str]]):
        super().__init__(message)
        self.failures = failures


def sampling_key(cfg: DataConfig) -> str:
    """The settings that decide which frames evaluation decodes (part of the cache key)."""
    return (f"video_framerate={cfg.video_framerate},max_frames={cfg.max_frames},"
            f"slice_framepos={cfg.slice_framepos}")


def _file_key(path: str) -> dict | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_cache(cache_path: str | None) -> dict:
    if not cache_path or not os.path.exists(cache_path):
        return {}
    try:
        with open(cache_path, encoding="utf-8") as f:
            cache = json.load(f)
        if cache.get("version") == CACHE_VERSION and isinstance(cache.get("passed"), dict):
            return cache["passed"]
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("ignoring the video probe cache %s: %s", cache_path, exc)
        return {}
    logger.warning("ignoring the video probe cache %s: unknown layout", cache_path)
    return {}


def _save_cache(cache_path: str, passed: dict) -> None:
    from tvr.utils.checkpoint import atomic_save_json  # lazy: pulls in torch

    atomic_save_json({"version": CACHE_VERSION, "passed": passed}, cache_path)


def _probe_one(path: str, index_fn, decode_threads: int) -> str | None:
    """None if the frames decode, else the reason."""
    try:
        read_frames(path, index_fn, num_threads=decode_threads)
    except VideoDecodeError as exc:
        return exc.reason
    except Exception as exc:  # read_frames wraps backend errors; anything else still fails this file
        return f"{type(exc).__name__}: {exc}"
    return None


def probe_videos(paths: Sequence[str], cfg: DataConfig, workers: int = 4, cache_path: str | None = None,
                 progress: bool = True) -> list[tuple[str, str]]:
    """Decode the frames evaluation will sample from each video; return (path, reason) per failure.

    workers: decoding threads (decord and OpenCV release the GIL); <= 1 probes in this thread.
    cache_path: JSON file remembering videos that passed (only passes are cached, so a fixed or
    replaced file is probed again). Failures come back in the order of `paths`.
    """
    index_fn = partial(sample_frame_indices, video_framerate=cfg.video_framerate,
                       max_frames=cfg.max_frames, slice_framepos=cfg.slice_framepos)
    sampling = sampling_key(cfg)
    passed = _load_cache(cache_path)
    unique = list(dict.fromkeys(os.fspath(p) for p in paths))
    failures: dict[str, str] = {}
    todo = []
    for path in unique:
        key = _file_key(path)
        if key is None:
            failures[path] = "the file does not exist or cannot be read"
        elif passed.get(os.path.abspath(path)) != dict(key, sampling=sampling):
            todo.append((path, key))
    cached = len(unique) - len(todo) - len(failures)
    if cached:
        logger.info("video probe: %d of %d videos already checked (cache %s)", cached, len(unique), cache_path)
    probe = partial(_probe_one, index_fn=index_fn, decode_threads=cfg.decode_threads)
    bar = tqdm(total=len(todo), desc="probing videos", unit="video", disable=not progress or not todo)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 and len(todo) > 1 else None
    try:
        results = (pool.map if pool else map)(probe, [p for p, _ in todo])
        _collect(todo, results, passed, failures, sampling, bar)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)  # on an interrupt, skip what has not started
        bar.close()
        if cache_path and todo:
            _save_cache(cache_path, passed)  # also after an interrupt: keep what was checked
    return [(p, failures[p]) for p in unique if p in failures]


def _collect(todo, results, passed: dict, failures: dict, sampling: str, bar) -> None:
    for (path, key), reason in zip(todo, results):
        if reason is None:
            passed[os.path.abspath(path)] = dict(key, sampling=sampling)
        else:
            failures[path] = reason
        bar.update(1)


def check_eval_videos(eval_data, cfg: DataConfig, workers: int = 4, cache_path: str | None = None,
                      progress: bool = True) -> list[tuple[str, str]]:
    """Check every video of the evaluation splits before training starts.

    eval_data: an EvalData (build_eval_dataset), a RetrievalSplit, a list of video paths, or a list of
    EvalData / RetrievalSplit (validation and test). A split with a frame cache (--cache_frames) is not
    decoded again: building the cache decoded exactly the frames evaluation reads, with the loader's
    own code, and kept every failure. The other videos are probed (`probe_videos`).
    Raises UndecodableVideosError listing every failing file, unless cfg.allow_decode_errors:
    then logs the same list as a warning (those videos will count as never retrieved).
    Returns the failures, (path, reason) each, in the order of the videos.
    """
    sources = eval_data if isinstance(eval_data, (list, tuple)) else [eval_data]
    paths: list[str] = []  # every evaluation video, in order
    to_probe: list[str] = []
    reasons: dict[str, str] = {}  # path -> why it cannot be decoded
    for source in sources:
        split = source.videos.data if hasattr(source, "videos") else source  # EvalData -> RetrievalSplit
        if not hasattr(split, "video_paths"):  # a path
            paths.append(os.fspath(split))
            to_probe.append(paths[-1])
            continue
        paths += split.video_paths
        cache = getattr(split, "frame_cache", None)
        if cache is None:
            to_probe += split.video_paths
        else:
            reasons.update((split.video_paths[v], reason) for v, reason in cache.errors.items())
    reasons.update(probe_videos(to_probe, cfg, workers=workers, cache_path=cache_path, progress=progress))
    unique = list(dict.fromkeys(paths))
    failures = [(path, reasons[path]) for path in unique if path in reasons]
    if not failures:
        cached = len(unique) - len(set(to_probe))
        logger.info("video probe: all %d evaluation videos decode%s", len(unique),
                    f" ({cached} checked when the frame cache decoded them)" if cached else "")
        return failures
    listing = "\n".join(f"  {path}: {_short(reason)}" for path, reason in failures)
    head = f"{len(failures)} of {len(unique)} evaluation videos cannot be decoded:\n{listing}\n"
    if cfg.allow_decode_errors:
        logger.warning("%sWith --allow_decode_errors they count as never retrieved.", head)
        return failures
    raise UndecodableVideosError(
        f"{head}Replace or re-encode these files, or pass --allow_decode_errors 1 to score them as "
        f"never retrieved.", failures)


def _short(reason: str, limit: int = 200) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."
