"""Fetching and reading CLIP checkpoint files.

Two jobs, kept apart from the architecture in ``module_clip`` so that each can be read (and
tested) on its own:

* ``download_openai_checkpoint``: fetch one of OpenAI's released checkpoints into a cache folder.
  The sha256 is part of OpenAI's URL, so every file is verified; the download goes to a temporary
  name in the cache folder and is renamed into place only once its hash is right, which means a
  partial or corrupt file is never picked up later (several DDP ranks downloading at once is
  safe too: each writes its own temporary file and ``os.replace`` is atomic).
* ``read_state_dict``: turn a checkpoint file into a plain ``{name: tensor}`` dict. OpenAI ships
  TorchScript archives, which ``torch.load(weights_only=True)`` cannot read, so those go through
  ``torch.jit.load``; everything else must be a plain state dict and is read with
  ``weights_only=True`` (no arbitrary pickles).
"""

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from typing import Dict, Optional

import torch

logger = logging.getLogger(__name__)

# Environment variable that overrides the default cache folder (``~/.cache/clip``, which is also
# where OpenAI's own ``clip`` package caches the same files, so they are shared).
CACHE_ENV_VAR = "VIDEOCOLBERT_CLIP_CACHE"

_URL_ROOT = "https://openaipublic.azureedge.net/clip/models"

# OpenAI model name -> download URL; the second-to-last URL component is the file's sha256.
OPENAI_MODELS: Dict[str, str] = {
    "ViT-B/32": f"{_URL_ROOT}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_URL_ROOT}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_URL_ROOT}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": f"{_URL_ROOT}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

_CHUNK = 1 << 20  # bytes read per step while downloading / hashing
_DOWNLOAD_TIMEOUT_S = 60  # per socket operation, not for the whole file


def default_cache_dir() -> str:
    """``$VIDEOCOLBERT_CLIP_CACHE`` if set, else ``~/.cache/clip``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "clip"))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_openai_checkpoint(name: str, cache_dir: Optional[str] = None) -> str:
    """Return the local path of OpenAI checkpoint ``name``, downloading it if needed.

    A cached file is used only if its sha256 matches the one in the URL; otherwise it is
    downloaded again (and replaced only after the new copy checks out).
    """
    url = OPENAI_MODELS[name]
    expected_sha = url.split("/")[-2]
    root = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    target = os.path.join(root, os.path.basename(url))

    stale_note = ""
    if os.path.isfile(target):
        actual = file_sha256(target)
        if actual == expected_sha:
            return target
        stale_note = f" (the file already at {target} has sha256 {actual}, so it was not used)"
        logger.warning("Cached %s has sha256 %s, expected %s: downloading it again", target, actual, expected_sha)

    manual_hint = (
        f"Download {url} by other means and place it at {target} "
        f"(expected sha256 {expected_sha}), or pass the file's path instead of '{name}'."
    )
    try:
        os.makedirs(root, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=root, prefix=os.path.basename(target) + ".", suffix=".part")
    except OSError as e:
        raise RuntimeError(f"Cannot write to the CLIP cache folder {root}: {e}. {manual_hint}") from e

    logger.info("Downloading CLIP %s from %s to %s", name, url, target)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:  # URLError/HTTPError are OSErrors
        _remove_quietly(tmp_path)
        raise RuntimeError(f"Failed to download CLIP {name} from {url}: {e}{stale_note}. {manual_hint}") from e
    except BaseException:  # KeyboardInterrupt etc.: leave no temporary file behind
        _remove_quietly(tmp_path)
        raise

    actual = digest.hexdigest()
    if actual != expected_sha:
        _remove_quietly(tmp_path)
        raise RuntimeError(
            f"Downloaded CLIP {name} from {url} has sha256 {actual}, expected {expected_sha}; "
            f"the file was discarded{stale_note}. {manual_hint}"
        )
    os.replace(tmp_path, target)
    logger.info("Saved CLIP %s to %s", name, target)
    return target


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _is_torchscript_archive(path: str) -> bool:
    """TorchScript archives are zip files holding a ``code/`` folder (or ``constants.pkl``);
    ``torch.save`` zip files hold ``data.pkl`` and no code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file into a ``{name: tensor}`` dict on the CPU (dtypes untouched).

    Accepts a TorchScript archive (OpenAI's format) or a plain state dict saved with
    ``torch.save``; a dict that wraps the state dict under ``"state_dict"`` or ``"model"`` is
    unwrapped too.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint {path} does not exist or is not a file")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated, but it is the format OpenAI ships; we only read weights.
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
                module = torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise RuntimeError(f"Could not read TorchScript archive {path}: {e}") from e
        return dict(module.state_dict())

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"Could not read {path} as a CLIP checkpoint: it is not a TorchScript archive and "
            f"torch.load(weights_only=True) failed ({type(e).__name__}: {e}). Expected OpenAI's "
            f"TorchScript .pt file or a plain state dict saved with torch.save(model.state_dict())."
        ) from e

    if isinstance(obj, dict):
        for wrapper_key in ("state_dict", "model"):
            inner = obj.get(wrapper_key)
            if isinstance(inner, dict) and not any(torch.is_tensor(v) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        kind = type(obj).__name__
        raise RuntimeError(
            f"{path} does not hold a state dict of tensors (found a {kind}). "
            f"Expected OpenAI's TorchScript .pt file or torch.save(model.state_dict())."
        )
    return dict(obj)
