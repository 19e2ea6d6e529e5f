"""The search index on disk: self-describing shards plus a manifest.

    INDEX/manifest.json              what is indexed: format, checkpoint, data settings, one entry per
                                     video (key, size, mtime, id, shard, row, duration), failed videos
    INDEX/shards/<name>.safetensors  per video: tokens of each branch (float16), their masks, frame
                                     timestamps and duration; the header names the checkpoint (sha256)
                                     and each video's key, size, mtime and id, and lists the videos of
                                     this batch that failed to decode
    INDEX/ann/                       optional approximate-search data (ann_store.py)

Shards are written under a temporary name and renamed into place (atomic_write), so one exists
complete or not at all. They are the truth: the manifest is rebuilt from their headers whenever an
indexing run starts or ends, so a run killed between a shard and the manifest loses nothing.
Tensors are read through memory maps of the safetensors byte layout (8-byte header length, JSON
header, raw little-endian data), so a query touches only the rows it scores.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from ..utils.checkpoint import atomic_write
from .ann import TokenBatch

logger = logging.getLogger(__name__)

FORMAT = "videocolbert-search-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "U8": np.uint8, "I8": np.int8, "I16": np.int16,
           "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}
_MAX_HEADER = 1 << 28


class SearchIndexError(RuntimeError):
    """An index is missing, unreadable, or does not belong to the model at hand."""


class ManifestUnreadable(SearchIndexError):
    """manifest.json exists but is not valid JSON (indexing rebuilds it from the shards)."""


def shard_dir(index_dir: str) -> str:
    return os.path.join(index_dir, SHARDS)


# ---- shards ---------------------------------------------------------------------------------------
def write_shard(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, object]) -> None:
    """Atomically write arrays + JSON-able metadata (each value stored as a JSON string)."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata={k: json.dumps(v) for k, v in meta.items()})
    atomic_write(path, lambda f: f.write(data))


class Shard:
    """Read-only view of one shard file: its metadata and memory-mapped arrays."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n <= min(size - 8, _MAX_HEADER):
                    raise ValueError(f"header length {n} does not fit a file of {size} bytes")
                header = json.loads(f.read(n))
            self._data_start = 8 + n
            self.meta = {k: json.loads(v) for k, v in header.pop("__metadata__", {}).items()}
            self._specs = header
            for name, spec in header.items():
                begin, end = spec["data_offsets"]
                if spec["dtype"] not in _DTYPES:
                    raise ValueError(f"tensor {name} has an unsupported dtype {spec['dtype']}")
                if self._data_start + end > size:
                    raise ValueError(f"tensor {name} (bytes {begin}-{end}) runs past the end of the file: truncated?")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SearchIndexError(f"cannot read index shard {path}: {exc}") from exc
        self._maps: Dict[str, np.ndarray] = {}

    @property
    def videos(self) -> List[dict]:
        return list(self.meta.get("videos", []))

    @property
    def failed(self) -> List[dict]:
        return list(self.meta.get("failed", []))

    @property
    def checkpoint_sha256(self) -> Optional[str]:
        return self.meta.get("checkpoint_sha256")

    def names(self) -> List[str]:
        return list(self._specs)

    def array(self, name: str) -> np.ndarray:
        if name not in self._maps:
            if name not in self._specs:
                raise SearchIndexError(f"index shard {self.path} has no tensor {name!r}")
            spec = self._specs[name]
            begin, end = spec["data_offsets"]
            shape = tuple(spec["shape"])
            if end == begin:
                self._maps[name] = np.zeros(shape, _DTYPES[spec["dtype"]])
            else:
                self._maps[name] = np.memmap(self.path, dtype=_DTYPES[spec["dtype"]], mode="r",
                                             offset=self._data_start + begin, shape=shape)
        return self._maps[name]


def read_ahead(tokens: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel to start reading these rows of a memory-mapped array, all at once.

    Candidates for the exact re-rank are scattered over files larger than memory; read one after
    another, each costs a disk round trip (about 1 ms). Announced together, the reads are queued
    in parallel: 1,024 candidates of a 1M-video index fetch in ~0.1 s instead of ~0.7 s.
    A no-op for arrays that are not file-backed and where posix_fadvise does not exist.
    """
    if not isinstance(tokens, np.memmap) or not hasattr(os, "posix_fadvise") or not len(rows):
        return
    row_bytes = tokens.strides[0]
    fd = os.open(tokens.filename, os.O_RDONLY)
    try:
        for r in np.unique(rows):
            os.posix_fadvise(fd, tokens.offset + int(r) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def list_shards(index_dir: str) -> List[str]:
    folder = shard_dir(index_dir)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".safetensors") and not f.startswith("."))


# ---- manifest -------------------------------------------------------------------------------------
def read_manifest(index_dir: str) -> dict:
    path = os.path.join(index_dir, MANIFEST)
    if not os.path.isdir(index_dir):
        raise SearchIndexError(f"no search index at {index_dir} (not a folder); build one with "
                               f"`python -m tvr.search index --checkpoint CK --videos DIR --out {index_dir}`")
    if not os.path.isfile(path):
        hint = (" Its shards are there: re-run `python -m tvr.search index` on it to rebuild the manifest."
                if list_shards(index_dir) else "")
        raise SearchIndexError(f"{index_dir} is not a search index: {path} is missing.{hint}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise ManifestUnreadable(f"cannot read {path}: {exc}. Re-run `python -m tvr.search index` on {index_dir} "
                               f"to rebuild it from the shards.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SearchIndexError(f"{path} is not a search index manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SearchIndexError(f"{path} has index format {manifest['format_version']}; this code reads up to "
                               f"{FORMAT_VERSION}: update the code")
    return manifest


def write_manifest(index_dir: str, manifest: dict) -> None:
    data = json.dumps(manifest, indent=1).encode("utf-8")
    atomic_write(os.path.join(index_dir, MANIFEST), lambda f: f.write(data))


# ---- reading an index -----------------------------------------------------------------------------
@dataclass
class VideoEntry:
    key: str
    vid: int
    shard: str
    row: int
    duration: float


class IndexReader:
    """The videos of an index in manifest order (sorted by key); row i of every result is entry i."""

    def __init__(self, index_dir: str, manifest: Optional[dict] = None):
        self.index_dir = index_dir
        self.manifest = manifest if manifest is not None else read_manifest(index_dir)
        self.branches: List[str] = list(self.manifest["branches"])
        self.entries = [VideoEntry(v["key"], int(v["vid"]), v["shard"], int(v["row"]), float(v.get("duration", "nan")))
                        for v in self.manifest["videos"]]
        self._shards: Dict[str, Shard] = {}
        self.shard_names = sorted({e.shard for e in self.entries})
        index_of = {name: i for i, name in enumerate(self.shard_names)}
        self._entry_shard = np.array([index_of[e.shard] for e in self.entries], dtype=np.int64)
        self._entry_row = np.array([e.row for e in self.entries], dtype=np.int64)
        self.vids = np.array([e.vid for e in self.entries], dtype=np.int64)
        self._vid_order = np.argsort(self.vids)

    def __len__(self) -> int:
        return len(self.entries)

    def shard(self, name: str) -> Shard:
        if name not in self._shards:
            path = os.path.join(shard_dir(self.index_dir), name)
            if not os.path.isfile(path):
                raise SearchIndexError(f"index {self.index_dir} lists shard {name}, but {path} is missing; "
                                       f"re-run `python -m tvr.search index` to re-encode its videos")
            self._shards[name] = Shard(path)
        return self._shards[name]

    def rows_of_vids(self, vids: np.ndarray) -> np.ndarray:
        """Entry rows of video ids; -1 for ids not in the index (e.g. superseded versions)."""
        vids = np.asarray(vids, dtype=np.int64)
        if not len(self.vids):
            return np.full(len(vids), -1, np.int64)
        sorted_vids = self.vids[self._vid_order]
        pos = np.minimum(np.searchsorted(sorted_vids, vids), len(sorted_vids) - 1)
        return np.where(sorted_vids[pos] == vids, self._vid_order[pos], -1)

    def fetch(self, rows: np.ndarray) -> List[TokenBatch]:
        """Stored tokens (as float32) and masks of entries `rows`, one TokenBatch per branch."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = self._entry_shard[rows]
        out = []
        for b in self.branches:
            tokens = masks = None
            for s in np.unique(shard_of):
                pos = np.nonzero(shard_of == s)[0]
                shard = self.shard(self.shard_names[s])
                src = self._entry_row[rows[pos]]
                t, m = shard.array(f"{b}_tokens"), shard.array(f"{b}_mask")
                if tokens is None:
                    tokens = torch.empty((len(rows),) + t.shape[1:], dtype=torch.float32)
                    masks = torch.empty((len(rows),) + m.shape[1:], dtype=torch.bool)
                p = torch.from_numpy(pos)
                tokens[p] = torch.from_numpy(np.asarray(t[src], dtype=np.float32))
                masks[p] = torch.from_numpy(np.asarray(m[src]).astype(bool))
            out.append(TokenBatch(tokens, masks))
        return out

    def prefetch(self, rows: np.ndarray) -> None:
        """Start reading the stored tokens of entries `rows` (see read_ahead); fetch them later."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = self._entry_shard[rows]
        for s in np.unique(shard_of):
            shard = self.shard(self.shard_names[s])
            src = self._entry_row[rows[shard_of == s]]
            for b in self.branches:
                read_ahead(shard.array(f"{b}_tokens"), src)

    def timestamps(self, row: int) -> np.ndarray:
        e = self.entries[row]
        return np.asarray(self.shard(e.shard).array("timestamps")[e.row], dtype=np.float32)

    def chunks(self, size: int = 4096) -> Iterator[tuple]:
        """(rows, TokenBatch per branch) over every entry, in order, `size` at a time."""
        for start in range(0, len(self.entries), size):
            rows = np.arange(start, min(start + size, len(self.entries)))
            yield rows, self.fetch(rows)
