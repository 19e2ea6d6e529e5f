"""A run's settings: three small config objects built once from the flags and saved in every checkpoint.

``RunConfig`` = model (what a checkpoint holds), data (what the model was fed) and optimisation (how it
was trained). The trainer, the datasets and the model are built from these, never from the argparse
namespace; the same dict is written to the log, to ``output_dir/config.json`` and into checkpoints, and
``--resume`` compares it field by field with the current run.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .dataloaders.config import DataConfig
from .models.modeling import ModelConfig

# Format of the "config" entry of our checkpoints; 1 was the flag namespace ("args") alone.
CHECKPOINT_FORMAT = 2

# Settings that may differ between a run and its resumption without changing its trajectory. Every
# other field is compared, so a setting added later is protected by default.
RESUME_MAY_DIFFER = frozenset({
    "data.anno_path", "data.video_path", "data.decode_threads", "data.allow_decode_errors",
    "data.drop_missing_videos", "data.cache_frames", "model.sim_chunk_size", "model.pretrained", "model.tokenizer",
})


@dataclass
class OptimConfig:
    """How the model is trained (defaults: the MSR-VTT recipe)."""

    epochs: int = 5
    batch_size: int = 128  # global, split across ranks
    lr: float = 1e-4  # new modules
    coef_lr: float = 1e-3  # the encoder learns at lr * coef_lr
    loss_lr: Optional[float] = None  # the loss's temperatures and biases; None: lr
    weight_decay: float = 0.2
    warmup_proportion: float = 0.1
    grad_clip: float = 1.0
    seed: int = 42

    @property
    def effective_loss_lr(self) -> float:
        return self.lr if self.loss_lr is None else self.loss_lr


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    @classmethod
    def from_args(cls, args: Any) -> "RunConfig":
        """Pick each config's fields out of the flag namespace (fields without a flag keep their default)."""
        model = _pick(ModelConfig, args, init_log_temperature=math.log(args.init_temperature))
        return cls(model=model, data=DataConfig.from_args(args), optim=_pick(OptimConfig, args))

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return {"model": _plain(self.model), "data": _plain(self.data), "optim": _plain(self.optim)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> "RunConfig":
        """Inverse of to_dict; unknown keys (from a newer version) are refused, missing ones default."""
        parts = {}
        for name, klass in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig)):
            values = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"unknown {name} settings {unknown}: written by a newer version of this code?")
            parts[name] = klass(**values)
        return cls(**parts)

    @classmethod
    def from_legacy_args(cls, saved: Mapping[str, Any]) -> "RunConfig":
        """Checkpoints of format 1 stored the flag namespace as a dict under "args"."""
        saved = dict(saved)
        if saved.get("interaction") == "meanp":  # the baseline used to be an interaction
            saved["interaction"], saved["meanp"] = "mms", True
        ns = _Namespace(saved)
        return cls.from_args(ns) if "init_temperature" in saved else cls(
            model=_pick(ModelConfig, ns), data=DataConfig.from_args(ns), optim=_pick(OptimConfig, ns))

    def differences(self, other: "RunConfig", ignore=frozenset()) -> List[str]:
        """``--field ours in the checkpoint, theirs now`` for every field that differs, outside ``ignore``
        (``self`` is the checkpoint's configuration; names are ``section.field``)."""
        mine, theirs = self.to_dict(), other.to_dict()
        out = []
        for section in mine:
            for key in sorted(set(mine[section]) | set(theirs[section])):
                name = f"{section}.{key}"
                a, b = mine[section].get(key), theirs[section].get(key)
                if name not in ignore and a != b:
                    out.append(f"--{key} {_show(a)} in the checkpoint, {_show(b)} now")
        return out


class _Namespace:
    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)


def _pick(klass, args: Any, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(klass) if hasattr(args, f.name)}
    values.update(overrides)
    return klass(**values)


def _plain(obj) -> Dict[str, Any]:
    """asdict with tuples as lists, so a dict survives JSON and weights-only torch.load unchanged."""
    def convert(v):
        if isinstance(v, (tuple, list)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v
    return {k: convert(v) for k, v in dataclasses.asdict(obj).items()}


# Data settings a trained model depends on: taken from its checkpoint unless typed on the command line.
MODEL_DATA_FIELDS = ("max_words", "max_frames", "video_framerate", "slice_framepos", "input_resolution",
                     "image_mean", "image_std", "interpolation", "resize_mode")
# Model settings that only affect how scores are computed, not which model is scored.
MODEL_FREE_FIELDS = frozenset({"sim_chunk_size", "pretrained", "tokenizer"})
# Model settings whose flag has another name.
_FLAG_OF = {"init_log_temperature": "init_temperature"}


def reconcile_with_checkpoint(current: RunConfig, stored: RunConfig, explicit: frozenset, path: str) -> RunConfig:
    """The configuration to evaluate (or fine-tune) the model saved in ``path`` with.

    The model is the checkpoint's; a model flag typed on the command line that contradicts it is refused,
    naming the flag and both values. Data settings the model was trained with (frames, words, frame rate)
    are the checkpoint's unless typed; more frames than the temporal encoder has positions for are refused.
    Everything else (paths, dataset, optimisation) is the current run's.
    """
    model = dataclasses.replace(stored.model)
    for f in dataclasses.fields(ModelConfig):
        flag = _FLAG_OF.get(f.name, f.name)
        if flag not in explicit:
            continue
        mine, theirs = getattr(current.model, f.name), getattr(stored.model, f.name)
        if f.name in MODEL_FREE_FIELDS:
            setattr(model, f.name, mine)
        elif f.name == "max_frames":
            continue  # a data setting too: checked below against the temporal encoder's positions
        elif mine != theirs:
            shown = (math.exp(mine), math.exp(theirs)) if f.name == "init_log_temperature" else (mine, theirs)
            raise ValueError(f"--{flag} {_show(shown[0])} contradicts the checkpoint {path}, whose model has "
                             f"{flag} {_show(shown[1])}. Drop the flag to use the checkpoint's model.")
    data = dataclasses.replace(current.data)
    for name in MODEL_DATA_FIELDS:
        if hasattr(stored.data, name) and name not in explicit:
            setattr(data, name, getattr(stored.data, name))
    has_temporal = not model.meanp and "video" in model.branches
    if has_temporal and data.max_frames > model.max_frames:
        raise ValueError(f"--max_frames {data.max_frames}: the checkpoint {path} was trained with {model.max_frames} "
                         f"frames and its temporal encoder has position embeddings for {model.max_frames} frames "
                         f"only; use --max_frames <= {model.max_frames}")
    return RunConfig(model=model, data=data, optim=current.optim)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
