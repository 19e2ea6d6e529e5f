"""Build or update a search index: encode every video under a folder with a trained model.

Resumable and incremental. The videos to encode are those without a shard entry of the same
(size, mtime); each batch of `shard_size` videos is written as one shard (atomically), so a run
killed at any point, even with SIGKILL, keeps every finished shard and the next run encodes only
the rest. Video ids are assigned in key order from the highest id on disk, so they are the same
whatever the number of processes. Under torchrun each process encodes a contiguous share of the
list; rank 0 then writes the manifest (and the ANN data) from the shard headers.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..utils.launch import Runtime
from ..utils.sampling import shard_range
from .ann_config import AnnBuildConfig
from .model_ref import SearchModel, check_index_model, checkpoint_identity, load_search_model
from .store import (FORMAT, FORMAT_VERSION, ManifestUnreadable, SearchIndexError, Shard, list_shards, read_manifest, shard_dir,
                    write_manifest, write_shard)
from .videos import VideoFile, VideoLoader, describe_failure, find_videos

logger = logging.getLogger(__name__)

MANIFEST_EVERY_S = 300  # a single process also refreshes the manifest this often while encoding


@dataclass
class IndexOptions:
    batch_size: int = 8  # videos per forward pass
    workers: int = 2  # DataLoader processes decoding videos
    shard_size: int = 256  # videos per shard file
    ann: Optional[bool] = None  # build ANN data; None: keep whatever the index already has
    ann_config: AnnBuildConfig = field(default_factory=AnnBuildConfig)
    ann_retrain: bool = False  # train the ANN quantisers again and re-code every video
    progress: bool = True


@dataclass
class IndexSummary:
    index_dir: str
    total: int  # videos in the index after this run
    encoded: int  # encoded by this run (all processes)
    unchanged: int
    removed: int  # entries dropped because their file is gone
    failed: List[dict]  # {"key", "error"} of videos that could not be decoded


# ---- planning -------------------------------------------------------------------------------------
@dataclass
class _Known:
    entries: Dict[str, dict]  # key -> newest entry (vid, shard, row, size, mtime_ns, duration)
    failures: Dict[str, dict]  # key -> newest failure record
    max_vid: int
    shard_videos: Dict[str, List[int]]  # shard name -> vids it holds (entries and failures)


def _scan_shards(index_dir: str, sha256: str, fix: bool) -> _Known:
    """Everything the shards on disk hold. An unreadable shard is moved aside (by `fix`, rank 0):
    its videos are simply encoded again; no other shard is touched."""
    entries: Dict[str, List[dict]] = {}
    failures: Dict[str, dict] = {}
    shard_videos: Dict[str, List[int]] = {}
    max_vid = -1
    for path in list_shards(index_dir):
        try:
            shard = Shard(path)
        except SearchIndexError as exc:
            logger.warning("%s; its videos will be encoded again", exc)
            if fix:
                os.replace(path, path + ".corrupt")
            continue
        if shard.checkpoint_sha256 != sha256:
            raise SearchIndexError(f"index shard {path} was written with another checkpoint (sha256 "
                                   f"{str(shard.checkpoint_sha256)[:12]}...); this index mixes models: rebuild it "
                                   f"in a new folder")
        vids = []
        for row, v in enumerate(shard.videos):
            e = dict(v, shard=shard.name, row=row)
            known = entries.get(v["key"])
            if known is None or e["vid"] > known["vid"]:
                entries[v["key"]] = e
            vids.append(int(v["vid"]))
        for f in shard.failed:
            if f["key"] not in failures or f["vid"] > failures[f["key"]]["vid"]:
                failures[f["key"]] = dict(f, shard=shard.name)
            vids.append(int(f["vid"]))
        shard_videos[shard.name] = vids
        max_vid = max([max_vid] + vids)
    return _Known(entries, failures, max_vid, shard_videos)


def _plan(files: List[VideoFile], known: _Known):
    """(todo files with their new ids, live entries by key)."""
    live, todo = {}, []
    for f in files:
        e = known.entries.get(f.key)
        if e is not None and (e["size"], e["mtime_ns"]) == f.signature:
            live[f.key] = e
        else:
            todo.append(f)
    first = known.max_vid + 1
    return [(first + i, f) for i, f in enumerate(todo)], live


# ---- encoding -------------------------------------------------------------------------------------
class _VideoItems(Dataset):
    def __init__(self, items, loader: VideoLoader):
        self.items, self.loader = items, loader

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        vid, f = self.items[i]
        try:
            return vid, f, self.loader(f.path), None
        except Exception as exc:  # any decode failure is recorded, never dropped or zero-filled
            return vid, f, None, describe_failure(exc)


def _collate(batch):
    return batch


class _ShardWriter:
    """Collects encoded videos and writes them as shards of `size` videos."""

    def __init__(self, index_dir: str, sha256: str, branches: List[str], size: int):
        self.folder, self.sha256, self.branches, self.size = shard_dir(index_dir), sha256, branches, size
        self.rows: List[dict] = []
        self.failed: List[dict] = []
        self.written: List[str] = []

    def add(self, vid: int, f: VideoFile, tokens: Dict[str, tuple], timestamps: np.ndarray, duration: float):
        self.rows.append({"vid": vid, "file": f, "tokens": tokens, "timestamps": timestamps, "duration": duration})

    def fail(self, vid: int, f: VideoFile, error: str):
        self.failed.append({"vid": vid, "key": f.key, "size": f.size, "mtime_ns": f.mtime_ns, "error": error})

    def pending(self) -> int:
        return len(self.rows) + len(self.failed)

    def flush(self) -> Optional[str]:
        if not self.pending():
            return None
        vids = [r["vid"] for r in self.rows] + [f["vid"] for f in self.failed]
        name = f"{min(vids):010d}-{max(vids):010d}.safetensors"
        arrays = {}
        for b in self.branches:
            if self.rows:
                arrays[f"{b}_tokens"] = np.stack([r["tokens"][b][0] for r in self.rows])
                arrays[f"{b}_mask"] = np.stack([r["tokens"][b][1] for r in self.rows])
        if self.rows:
            arrays["timestamps"] = np.stack([r["timestamps"] for r in self.rows]).astype(np.float32)
            arrays["duration"] = np.array([r["duration"] for r in self.rows], np.float32)
            arrays["vid"] = np.array([r["vid"] for r in self.rows], np.int64)
        videos = [{"key": r["file"].key, "size": r["file"].size, "mtime_ns": r["file"].mtime_ns, "vid": r["vid"],
                   "duration": r["duration"]} for r in self.rows]
        write_shard(os.path.join(self.folder, name), arrays,
                    {"format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint_sha256": self.sha256,
                     "branches": self.branches, "videos": videos, "failed": self.failed})
        self.rows, self.failed = [], []
        self.written.append(name)
        return name


@torch.no_grad()
def _encode(sm: SearchModel, items, writer: _ShardWriter, opts: IndexOptions, device, show_progress: bool,
            on_shard=None) -> int:
    from tqdm import tqdm

    loader = VideoLoader(sm.run_cfg.data)
    data = DataLoader(_VideoItems(items, loader), batch_size=opts.batch_size, num_workers=opts.workers,
                      collate_fn=_collate)
    bar = tqdm(total=len(items), unit="video", disable=not show_progress, dynamic_ncols=True)
    encoded = 0
    for batch in data:
        ok = [(vid, f, v) for vid, f, v, err in batch if err is None]
        for vid, f, _, err in batch:
            if err is not None:
                writer.fail(vid, f, err)
                bar.write(f"cannot index {f.path}: {err}")
                logger.warning("cannot index %s: %s", f.path, err)
        if ok:
            video = torch.stack([v.video for _, _, v in ok]).to(device)  # B x T x 3 x R x R
            mask = torch.stack([v.mask for _, _, v in ok]).to(device)  # B x T
            out = sm.model.encode_video(video, mask)
            for i, (vid, f, v) in enumerate(ok):
                tokens = {b: (out[b].tokens[i].float().cpu().numpy().astype(np.float16),
                              out[b].mask[i].cpu().numpy().astype(np.uint8)) for b in sm.branches}
                writer.add(vid, f, tokens, v.timestamps.numpy(), v.duration)
            encoded += len(ok)
        bar.update(len(batch))
        if writer.pending() >= opts.shard_size:
            writer.flush()
            if on_shard is not None:
                on_shard()
    writer.flush()
    bar.close()
    return encoded


# ---- the command ----------------------------------------------------------------------------------
def _manifest(sm: SearchModel, videos_dir: str, files: List[VideoFile], known: _Known, ann_section) -> dict:
    live, failed = [], []
    for f in files:
        e = known.entries.get(f.key)
        if e is not None and (e["size"], e["mtime_ns"]) == f.signature:
            live.append({k: e[k] for k in ("key", "size", "mtime_ns", "vid", "shard", "row", "duration")})
            continue
        fail = known.failures.get(f.key)
        if fail is not None and (fail["size"], fail["mtime_ns"]) == f.signature:
            failed.append({"key": f.key, "error": fail["error"]})
    m = sm.model
    per_branch = {"frame": m.config.max_frames, "video": m.config.max_frames + m.config.visual_expansion, "meanp": 1}
    tokens = {b: per_branch[b] for b in sm.branches}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "checkpoint": {"path": sm.path, "sha256": sm.sha256, "config": sm.run_cfg.to_dict()},
        "video_root": os.path.abspath(videos_dir),
        "branches": sm.branches, "tokens_per_branch": tokens, "dim": int(m.clip.embed_dim),
        "videos": live, "failed": failed, "ann": ann_section,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _remove_unused(index_dir: str, manifest: dict, known: _Known) -> None:
    """Delete shards that hold nothing live any more (every video superseded or gone), and
    temporary files left by killed runs."""
    used = {v["shard"] for v in manifest["videos"]}
    live_failed = {f["key"] for f in manifest["failed"]}
    used |= {f["shard"] for k, f in known.failures.items() if k in live_failed}
    for name in known.shard_videos:
        if name not in used:
            os.remove(os.path.join(shard_dir(index_dir), name))
    folder = shard_dir(index_dir)
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))


def _barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def build_index(checkpoint: str, videos_dir: str, index_dir: str, opts: IndexOptions, runtime: Runtime) -> IndexSummary:
    """Encode what is missing or changed under videos_dir into index_dir; returns what happened."""
    # Everything cheap is checked before the model is built.
    sha = checkpoint_identity(checkpoint)
    manifest_path = os.path.join(index_dir, "manifest.json")
    previous = None
    if os.path.exists(manifest_path):
        try:
            previous = read_manifest(index_dir)
        except ManifestUnreadable as exc:
            logger.warning("%s; rebuilding it from the shards", exc)
    if previous is not None:
        check_index_model(previous, sha, checkpoint, index_dir)
    sm = load_search_model(checkpoint, device=runtime.device, sha256=sha)
    if previous is not None:
        check_index_model(previous, sha, checkpoint, index_dir, sm.run_cfg.to_dict())
    exts = sm.run_cfg.data.video_extensions
    files = find_videos(videos_dir, exts)
    if not files:
        raise FileNotFoundError(f"--videos {videos_dir}: no video files ({' '.join(exts)}) in it or its sub-folders"
                                + ("; the index is left as it is" if previous is not None else ""))
    os.makedirs(shard_dir(index_dir), exist_ok=True)

    known = _scan_shards(index_dir, sha, fix=runtime.is_main)
    todo, live = _plan(files, known)
    on_disk = {f.key for f in files}
    removed = sum(1 for v in (previous or {}).get("videos", []) if v["key"] not in on_disk)
    mine = [todo[i] for i in shard_range(len(todo), runtime.rank, runtime.world_size)]
    if runtime.is_main:
        logger.info("%d videos under %s: %d already indexed, %d to encode%s", len(files), videos_dir, len(live),
                    len(todo), f" over {runtime.world_size} processes" if runtime.world_size > 1 else "")
    _barrier(runtime)  # rank 0 may have moved a corrupt shard aside

    ann_enabled = opts.ann if opts.ann is not None else bool(previous and previous.get("ann"))
    writer = _ShardWriter(index_dir, sha, sm.branches, opts.shard_size)
    last_manifest = [time.time()]

    def refresh_manifest():  # a convenience while a long single-process run goes on
        if runtime.world_size == 1 and time.time() - last_manifest[0] > MANIFEST_EVERY_S:
            write_manifest(index_dir, _manifest(sm, videos_dir, files, _scan_shards(index_dir, sha, False),
                                                previous.get("ann") if previous else None))
            last_manifest[0] = time.time()

    encoded = _encode(sm, mine, writer, opts, runtime.device, opts.progress and runtime.is_main, refresh_manifest)
    if runtime.world_size > 1:
        counts = torch.tensor([encoded], dtype=torch.long, device=runtime.device)  # nccl reduces CUDA tensors only
        dist.all_reduce(counts)
        encoded = int(counts.item())
    _barrier(runtime)

    summary = None
    if runtime.is_main:
        known = _scan_shards(index_dir, sha, fix=True)
        manifest = _manifest(sm, videos_dir, files, known, previous.get("ann") if previous else None)
        write_manifest(index_dir, manifest)
        _remove_unused(index_dir, manifest, known)
        if ann_enabled and manifest["videos"]:
            from .ann_store import update_ann

            manifest["ann"] = update_ann(index_dir, manifest, opts.ann_config, retrain=opts.ann_retrain,
                                         progress=opts.progress)
            write_manifest(index_dir, manifest)
        elif opts.ann is False and manifest.get("ann"):
            from .ann_store import remove_ann

            manifest["ann"] = None
            write_manifest(index_dir, manifest)
            remove_ann(index_dir)
        summary = IndexSummary(index_dir, len(manifest["videos"]), encoded, len(live), removed, manifest["failed"])
    _barrier(runtime)
    return summary
