"""The library versions and CPU a run used, written to log.txt and eval_results.json.

Results of the same code can differ between machines when a library changes underneath it (a video
encoder, BLAS kernels) and between CPU models with the same libraries (the math libraries choose
kernels and blocking per CPU), so every run records what it ran with and on.
"""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

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
    versions["cpu"] = cpu_description()
    versions["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return versions


def cpu_description(cpuinfo: Optional[str] = None) -> str:
    """'<model name> (cpu family F, model M, stepping S)' from /proc/cpuinfo; virtual machines often hide
    the model name ("AMD EPYC"), and the family and model numbers still tell the CPU generations apart."""
    path = Path("/proc/cpuinfo")
    if cpuinfo is None and path.exists():
        cpuinfo = path.read_text(errors="replace")
    fields: Dict[str, str] = {}
    for line in (cpuinfo or "").splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields]
    return f"{name} ({', '.join(numbers)})" if numbers else name
