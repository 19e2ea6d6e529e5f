"""Which model an index belongs to: a checkpoint's sha256 and configuration, checked before use."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from .store import SearchIndexError


def file_sha256(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


@dataclass
class SearchModel:
    model: Any  # VideoColBERT in eval mode
    run_cfg: Any  # RunConfig
    path: str
    sha256: str

    @property
    def branches(self):
        return list(self.model.config.active_branches)

    @property
    def tokenizer(self):
        return self.model.clip.tokenizer


def checkpoint_identity(path: str) -> str:
    """sha256 of the checkpoint file; a clear error when it is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    return file_sha256(path)


def load_search_model(path: str, device: str | torch.device = "cpu", sha256: str | None = None) -> SearchModel:
    from ..engine.model_io import load_trained_model  # lazy: builds the whole model stack

    sha = sha256 or checkpoint_identity(path)
    model, run_cfg = load_trained_model(path, device=device)
    return SearchModel(model, run_cfg, os.path.abspath(path), sha)


def check_index_model(manifest: dict, sha256: str, checkpoint_path: str, index_dir: str,
                      config: dict | None = None) -> None:
    """Refuse a model other than the one that built the index (sha256 of the checkpoint file)."""
    built = manifest.get("checkpoint", {})
    if built.get("sha256") == sha256:
        return
    if config is None:
        config = _stored_config(checkpoint_path)
    detail = ""
    if config is not None and built.get("config"):
        differ = _config_differences(built["config"], config)
        detail = (f" Settings that differ: {'; '.join(differ[:8])}." if differ
                  else " Their settings agree, but the weights differ.")
    raise SearchIndexError(
        f"index {index_dir} was built with checkpoint {built.get('path')} (sha256 {str(built.get('sha256'))[:12]}...), "
        f"not with {checkpoint_path} (sha256 {sha256[:12]}...).{detail} Tokens of one model cannot be searched "
        f"with another: use the index's own checkpoint, or build a new index with --out elsewhere.")


def _stored_config(path: str) -> dict | None:
    """The run configuration inside a checkpoint, for a helpful refusal; None when unreadable."""
    from ..engine.model_io import stored_config
    from ..utils.checkpoint import load_checkpoint

    try:
        cfg = stored_config(load_checkpoint(path), path)
    except Exception:  # the refusal stands either way; this only adds detail
        return None
    return cfg.to_dict() if cfg is not None else None


def _config_differences(a: dict, b: dict, prefix: str = "") -> list:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, f"{prefix}{key}.")
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(vb, sort_keys=True, default=str):
            out.append(f"{prefix}{key}: {va!r} in the index, {vb!r} now")
    return out
