"""Approximate-search data of an index on disk, kept in step with its shards.

    INDEX/ann/quantizer.safetensors   centroids (and their groups) and PQ codebook (header: settings, checkpoint)
    INDEX/ann/<shard>.safetensors     per shard: video ids, centroid ids and PQ codes of its videos

The quantiser is trained once, on a sample of the indexed tokens; later runs that add videos only
code the new shards with it (`--ann_retrain` trains it again and re-codes everything, worth doing
when the index has grown many times over). Codes of superseded videos are skipped at load time.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional

import numpy as np

from .ann import (AnnBuildConfig, AnnIndex, CodedVideos, Quantizer, encode_videos, sample_rows, train_quantizer,
                  training_tokens)
from .store import IndexReader, SearchIndexError, Shard, write_shard

logger = logging.getLogger(__name__)

ANN_DIR = "ann"
QUANTIZER = "quantizer.safetensors"


def _folder(index_dir: str) -> str:
    return os.path.join(index_dir, ANN_DIR)


def _train(reader: IndexReader, cfg: AnnBuildConfig) -> Quantizer:
    per_video = sum(reader.manifest["tokens_per_branch"][b] for b in reader.branches)
    total = int(len(reader) * per_video)
    rows = sample_rows(len(reader), max(1, math.ceil(training_tokens(cfg, total) / per_video)), cfg.seed)
    sample = np.concatenate([b.tokens[b.mask].numpy() for b in reader.fetch(rows)])  # n x D
    return train_quantizer(sample, cfg, total_tokens=total)


def update_ann(index_dir: str, manifest: dict, cfg: AnnBuildConfig, retrain: bool = False, progress: bool = True) -> dict:
    """Train the quantiser if needed, code every shard not coded yet; returns the manifest's "ann" entry."""
    from tqdm import tqdm

    folder = _folder(index_dir)
    os.makedirs(folder, exist_ok=True)
    reader = IndexReader(index_dir, manifest)
    qpath = os.path.join(folder, QUANTIZER)
    sha = manifest["checkpoint"]["sha256"]
    if retrain or not os.path.exists(qpath):
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        quantizer = _train(reader, cfg)
        write_shard(qpath, quantizer.arrays(),
                    {"config": dataclasses.asdict(cfg), "checkpoint_sha256": sha})
    else:
        quantizer = load_quantizer(index_dir, sha)
    shards = reader.shard_names
    todo = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
    for name in tqdm(todo, desc="ANN codes", unit="shard", disable=not progress or not todo):
        rows = np.nonzero(np.array([e.shard == name for e in reader.entries]))[0]
        batches = reader.fetch(rows)
        coded = encode_videos(quantizer, reader.vids[rows], [(b.tokens.numpy(), b.mask.numpy()) for b in batches])
        write_shard(os.path.join(folder, name), {"vids": coded.vids, "lists": coded.lists, "codes": coded.codes},
                    {"checkpoint_sha256": sha})
    for name in os.listdir(folder):  # codes of shards that are gone
        if name != QUANTIZER and name.endswith(".safetensors") and name not in shards:
            os.remove(os.path.join(folder, name))
    return {"nlist": quantizer.nlist, "pq_m": quantizer.m, "config": dataclasses.asdict(cfg)}


def remove_ann(index_dir: str) -> None:
    import shutil

    shutil.rmtree(_folder(index_dir), ignore_errors=True)


def load_quantizer(index_dir: str, sha256: str) -> Quantizer:
    shard = Shard(os.path.join(_folder(index_dir), QUANTIZER))
    if shard.meta.get("checkpoint_sha256") != sha256:
        raise SearchIndexError(f"{shard.path} was trained on another model's tokens; rebuild it with --ann_retrain")
    try:
        return Quantizer.from_arrays({name: shard.array(name) for name in shard.names()})
    except (TypeError, ValueError) as exc:  # a missing array, or arrays that do not fit together
        raise SearchIndexError(f"{shard.path} is not a usable quantiser ({exc}); rebuild it with --ann_retrain") from exc


def load_ann(reader: IndexReader) -> Optional[AnnIndex]:
    """The ANN index over the live videos of `reader`, or None when the index has none."""
    manifest = reader.manifest
    if not manifest.get("ann"):
        return None
    folder = _folder(reader.index_dir)
    quantizer = load_quantizer(reader.index_dir, manifest["checkpoint"]["sha256"])
    parts = []
    for name in reader.shard_names:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise SearchIndexError(f"the ANN data of {reader.index_dir} lacks {path}; re-run "
                                   f"`python -m tvr.search index` on it to complete it")
        part = Shard(path)
        vids = np.asarray(part.array("vids"))
        keep = reader.rows_of_vids(vids) >= 0  # superseded versions of a video are dropped
        parts.append(CodedVideos(vids[keep], np.asarray(part.array("lists"))[keep], np.asarray(part.array("codes"))[keep]))
    sizes = [manifest["tokens_per_branch"][b] for b in reader.branches]
    return AnnIndex(quantizer, parts, sizes)
