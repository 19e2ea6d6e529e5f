"""Frame transforms: CLIP's preprocessing on uint8 tensors.

Resize the short side to the encoder's input resolution (bicubic, antialiased like CLIP's PIL
resize), centre-crop a square, scale to [0, 1], normalise with CLIP's mean/std. Resizing and
cropping run on uint8 (4x less memory traffic than float; torch has a fast channels-last uint8
antialiased path) and only the final R x R crop is converted to float.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_frame_transform(resolution: int) -> v2.Compose:
    """uint8 T x 3 x H x W (RGB) -> float32 T x 3 x R x R, normalised."""
    return v2.Compose([
        v2.Resize(resolution, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(resolution),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
    ])


def frames_to_tensor(frames_thwc) -> torch.Tensor:
    """numpy/tensor T x H x W x 3 uint8 -> uint8 tensor T x 3 x H x W (no copy).

    The result is a channels-last view of the decoder's buffer. Deliberately not made
    contiguous: the copy costs more than the resize itself for 720p frames, and torch's uint8
    antialiased resize is about 2x faster on channels-last input.
    """
    t = torch.as_tensor(frames_thwc)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 T x H x W x 3 frames, got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2)
