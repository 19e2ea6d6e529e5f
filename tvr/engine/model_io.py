"""Build a VideoColBERT from its configuration, and rebuild exactly the trained model from a checkpoint.

A checkpoint describes itself: ``{"format_version": 2, "config": RunConfig.to_dict(), "model": state_dict,
...}``. Evaluation and ``--init_model`` build the model from that configuration and load its weights
strictly, so a checkpoint trained with non-default model flags is never scored as a partly
re-initialised model. Older checkpoints (the flag namespace under "args") and bare state dicts load too.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

import torch

from ..config import CHECKPOINT_FORMAT, RunConfig
from ..models.modeling import ModelConfig, VideoColBERT
from ..models.module_clip import CLIP, SCRATCH_CONFIGS, CLIPConfig, load_clip
from ..utils.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_model_weights



def build_model(cfg: ModelConfig, *, load_weights: bool = True, cache_dir: Optional[str] = None) -> VideoColBERT:
    """The model described by ``cfg``. ``load_weights=False`` builds the encoder's architecture only
    (random weights, no download): for a checkpoint that is about to overwrite every weight."""
    if cfg.base_encoder.startswith("open_clip:"):
        # Random weights when a checkpoint follows, but the tokenizer and preprocessing of --pretrained.
        clip = load_clip(cfg.base_encoder, cache_dir=cache_dir, pretrained=cfg.pretrained, tokenizer=cfg.tokenizer,
                         load_weights=load_weights)
    elif not load_weights and cfg.encoder_config is not None:
        clip = CLIP.from_config(CLIPConfig(**cfg.encoder_config))
    elif not load_weights and cfg.base_encoder in SCRATCH_CONFIGS:  # an OpenAI name: its shape, no download
        clip = CLIP.from_config(SCRATCH_CONFIGS[cfg.base_encoder])
    else:
        clip = load_clip(cfg.base_encoder, cache_dir=cache_dir)
    arch = getattr(clip, "config", None)
    if cfg.encoder_config is None and dataclasses.is_dataclass(arch):
        cfg = dataclasses.replace(cfg, encoder_config=dataclasses.asdict(arch))
    return VideoColBERT(clip, cfg)


def checkpoint_payload(model: VideoColBERT, run_cfg: RunConfig, **extra: Any) -> dict:
    """What every checkpoint holds: format version, the run's configuration, the weights, and ``extra``."""
    return {"format_version": CHECKPOINT_FORMAT, "config": run_cfg.to_dict(), "model": model.state_dict(), **extra}


def stored_config(ckpt: Any, path: str) -> Optional[RunConfig]:
    """The run configuration saved in a loaded checkpoint; None for a bare state dict."""
    if not isinstance(ckpt, Mapping):
        return None
    try:
        if "config" in ckpt:
            version = ckpt.get("format_version")
            if version is not None and version > CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path} has checkpoint format {version}; this code reads up to "
                                      f"{CHECKPOINT_FORMAT}: update the code")
            return RunConfig.from_dict(ckpt["config"])
        if isinstance(ckpt.get("args"), Mapping):
            return RunConfig.from_legacy_args(ckpt["args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored configuration cannot be read: {e}") from e
    return None


def load_trained_model(path: str, device: str | torch.device = "cpu") -> Tuple[VideoColBERT, RunConfig]:
    """Rebuild the model saved in ``path`` (eval mode) and return it with the run configuration."""
    ckpt = load_checkpoint(path)
    run_cfg = stored_config(ckpt, path)
    if run_cfg is None:
        raise CheckpointError(f"{path} holds weights but no model configuration (a bare state dict); "
                              f"evaluate it with main.py and the model flags it was trained with")
    model = build_model(run_cfg.model, load_weights=False)
    load_model_weights(model, extract_state_dict(ckpt), strict=True)
    return model.to(device).eval(), run_cfg
