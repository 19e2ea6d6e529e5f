"""Mixed precision: autocast and the fp16 gradient scaler, on CUDA only.

The CPU path always runs fp32, so CPU runs stay deterministic and comparable across machines.
"""
from contextlib import nullcontext
from typing import Optional

import torch

PRECISIONS = ("fp32", "fp16", "bf16")


def autocast_context(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def grad_scaler(device: torch.device, precision: str) -> Optional[torch.amp.GradScaler]:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
