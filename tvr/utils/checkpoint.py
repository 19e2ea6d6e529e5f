"""Checkpoint I/O: atomic writes, safe (weights_only) reads, RNG state capture, weight loading.

Why: a run killed while writing must never leave a truncated file under a checkpoint's final name
(``--resume`` would then crash or, worse, load garbage), and checkpoints are read with
``weights_only=True`` so that opening one never executes pickled code.  Everything stored here
(RNG states included) is therefore made of tensors, numbers, strings, lists, tuples and dicts.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import uuid
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable, Dict, List, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "extract_state_dict",
    "load_model_weights",
]


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read, or does not fit the model."""


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file under ``path`` (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_json(obj: Any, path: str) -> None:
    """``json.dump`` with atomic_write's guarantees (e.g. eval_results.json)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode("utf-8")))


def atomic_write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Run ``write`` on a binary file that appears under ``path`` only once complete.

    Writes ``<dir>/.<name>.<pid>.<random>.tmp`` in the destination folder (same file system, so the
    rename is atomic), flushes and fsyncs it, then ``os.replace``s it onto ``path``.  On any error the
    temporary file is removed and the previous ``path`` (if any) is left untouched.  The parent folder
    is created when missing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # "xb": fail rather than clobber; default permissions (0666 & ~umask) like a plain torch.save.
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform/file system
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with errors that name the file.

    Raises FileNotFoundError when ``path`` does not exist and :class:`CheckpointError` saying what the
    file is (or is not) when it cannot be read safely: not a torch file, truncated, a TorchScript
    archive, or pickled objects other than tensors and plain containers. Opening a checkpoint never
    executes code, and the error never suggests turning that protection off.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Checked first: older torch (2.3) hands a TorchScript archive to torch.jit.load even with weights_only.
    if _is_torchscript_archive(path):
        raise CheckpointError(f"cannot read checkpoint {path}: {TORCHSCRIPT_MESSAGE}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        raise CheckpointError(f"cannot read checkpoint {path}: {describe_unreadable(path, e)}") from None


TORCHSCRIPT_MESSAGE = ("it is a TorchScript archive (e.g. OpenAI's CLIP download), not a training checkpoint; "
                       "an encoder archive goes to --base_encoder")


def _is_torchscript_archive(path: str) -> bool:
    """A zip archive with TorchScript's code or constants in it (a readable zip only)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def describe_unreadable(path: str, error: Exception) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is, in words."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            zipfile.ZipFile(path).close()
        except zipfile.BadZipFile:
            return "it is a truncated or corrupt torch file (the zip archive is incomplete)"
        if _is_torchscript_archive(path):
            return TORCHSCRIPT_MESSAGE
    elif not head.startswith(b"\x80"):
        return f"it is not a PyTorch checkpoint (it starts with the bytes {head!r})"
    # torch 2.14 words it "Unsupported global: GLOBAL a.B", torch 2.3 "Unsupported class a.B"
    refused = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", str(error))
    if refused:
        return (f"it holds a pickled Python object ({refused.group(1)}) besides tensors and plain containers; "
                f"such objects can run code when loaded, so it is refused. Re-save it with only tensors, "
                f"dicts, lists, numbers and strings")
    return f"it is truncated or corrupt ({type(error).__name__})"


# ----------------------------------------------------------------------------------------------
# RNG state


def rng_state() -> Dict[str, Any]:
    """States of Python's ``random``, numpy's global RNG, torch CPU and every CUDA device.

    Only tensors, ints, floats, strings and None, so ``torch.load(weights_only=True)`` reads it back.
    """
    version, py_internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(py_internal, dtype=torch.int64),  # 625 values < 2**32
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),  # 624 uint32 values
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` captured.  CUDA states are restored for as many devices as
    both the checkpoint and this machine have (a warning says when the counts differ)."""
    py = state["python"]
    internal = tuple(int(v) for v in torch.as_tensor(py["state"]).tolist())
    random.setstate((int(py["version"]), internal, py["gauss_next"]))

    npst = state["numpy"]
    keys = torch.as_tensor(npst["keys"]).numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                         float(npst["cached_gaussian"])))

    torch.set_rng_state(torch.as_tensor(state["torch"]).to(device="cpu", dtype=torch.uint8))

    cuda_states = list(state.get("cuda") or [])
    if cuda_states or torch.cuda.is_available():
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if len(cuda_states) != available:
            logger.warning("checkpoint holds %d CUDA RNG states, this machine has %d CUDA devices; "
                           "restoring the first %d", len(cuda_states), available,
                           min(len(cuda_states), available))
        for i, s in enumerate(cuda_states[:available]):
            torch.cuda.set_rng_state(torch.as_tensor(s).to(device="cpu", dtype=torch.uint8), device=i)


# ----------------------------------------------------------------------------------------------
# Model weights


def extract_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint.

    Accepts a bare state dict (every value a tensor) or a training checkpoint dict holding one under
    ``"model"`` or ``"state_dict"``.
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else None
    raise CheckpointError(f"no model state dict found in checkpoint object of type {type(obj).__name__}"
                          + (f" (top-level keys {keys})" if keys is not None else ""))


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DistributedDataParallel/DataParallel adds."""
    out = {}
    for k, v in state_dict.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def load_model_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                       strict: bool = False) -> Tuple[List[str], List[str]]:
    """Load ``state_dict`` into ``model``; returns ``(missing_keys, unexpected_keys)``.

    * ``module.`` prefixes (DDP) are stripped; ``model`` may itself be DDP-wrapped.
    * Shape mismatches always raise :class:`CheckpointError` listing each key with both shapes
      (``load_state_dict`` would raise too, but only after partially copying, with a terse message).
    * Missing and unexpected keys are logged as warnings; with ``strict=True`` they raise
      :class:`CheckpointError` instead.
    """
    target = model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
    sd = _strip_module_prefix(state_dict)
    own = target.state_dict()

    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    shapes = "".join(f"\n  {k}: checkpoint {ck} vs model {md}" for k, ck, md in mismatched)
    if strict and (missing or unexpected or mismatched):
        raise CheckpointError(
            f"checkpoint does not match the model: {len(missing)} missing key(s) {missing}, "
            f"{len(unexpected)} unexpected key(s) {unexpected}, {len(mismatched)} shape mismatch(es){shapes}")
    if mismatched:
        raise CheckpointError(f"{len(mismatched)} parameter shape mismatch(es) between checkpoint and model:{shapes}")
    target.load_state_dict(sd, strict=False)
    logger.info("loaded %d of %d model tensors from the checkpoint", len(own) - len(missing), len(own))
    if missing:
        logger.warning("%d model key(s) missing from the checkpoint (left as initialised):\n  %s",
                       len(missing), "\n  ".join(missing))
    if unexpected:
        logger.warning("%d checkpoint key(s) not used by the model:\n  %s",
                       len(unexpected), "\n  ".join(unexpected))
    return missing, unexpected
