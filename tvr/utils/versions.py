"""The library versions a run used, written to log.txt and eval_results.json.

Results of the same code can differ between machines when a library changes underneath it (a video
encoder, BLAS kernels), so every run records what it ran with.
"""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Dict

import torch

_PACKAGES = ("torch", "torchvision", "numpy", "decord", "opencv-python-headless", "opencv-python",
             "open_clip_torch", "timm", "faiss-cpu")


def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["cuda"] = torch.version.cuda or "none"
    versions["torch_threads"] = str(torch.get_num_threads())
    return versions
