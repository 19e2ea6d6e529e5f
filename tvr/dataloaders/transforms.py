"""Frame transforms: a backbone's image preprocessing on uint8 tensors.

The default is CLIP's: resize the short side to the input resolution (bicubic, antialiased like
CLIP's PIL resize), centre-crop a square, scale to [0, 1], normalise with CLIP's mean/std. Mean,
std, interpolation and resize mode come from the backbone's preprocessing config (open_clip's
`resize_mode`: "shortest" = short side + centre crop, "squash" = both sides to R, "longest" = long
side to R, centre-padded with zeros).

Two stages: `resize_crop` (uint8 -> uint8 R x R) and `normalize` (uint8 -> float32). Resizing
runs on uint8 (4x less memory traffic than float; torch has a fast channels-last uint8
antialiased path) and only the final crop is converted to float; a frame cache can keep the
uint8 middle (4x smaller than floats).

torchvision is imported only when a frame really needs resampling: frames that already have the
resize size (decoded at that size, or read from a frame cache) are only cropped or padded, which is
plain slicing. Importing torchvision pulls in torch's compiler stack: seconds of start-up.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")  # torchvision's InterpolationMode values
RESIZE_MODES = ("shortest", "squash", "longest")


class FrameTransform:
    """uint8 T x 3 x H x W (RGB) -> float32 T x 3 x R x R, normalised (contiguous)."""

    def __init__(self, resolution: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 interpolation: str = "bicubic", resize_mode: str = "shortest"):
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean {tuple(mean)}, std {tuple(std)}")
        self.resolution = int(resolution)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.interpolation, self.resize_mode = interpolation, resize_mode
        # float32 like torchvision's Normalize, so the arithmetic (and every output byte) is the same
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        return (f"FrameTransform(resolution={self.resolution}, mean={self.mean}, std={self.std}, "
                f"interpolation={self.interpolation!r}, resize_mode={self.resize_mode!r})")

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) that `resize_crop` resizes an H x W frame to before cropping / padding.

        "shortest": torchvision's Resize rule (the long side truncated, int(R * long / short));
        "longest": open_clip's (the short side rounded, round(R * short / long)).
        """
        r = self.resolution
        if self.resize_mode == "squash":
            return r, r
        short, long = sorted((height, width))
        if self.resize_mode == "shortest":
            new_short, new_long = r, int(r * long / short)
        else:  # longest
            new_short, new_long = round(r * short / long), r
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def resize_crop(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 T x 3 x H x W -> uint8 T x 3 x R x R (resize, then centre crop or zero pad)."""
        h, w = self.resize_size(*frames.shape[-2:])
        if (h, w) != tuple(frames.shape[-2:]) and frames.numel() > 0:
            from torchvision.transforms.v2 import InterpolationMode, functional as F  # see the module docstring

            frames = F.resize(frames, [h, w], interpolation=InterpolationMode(self.interpolation), antialias=True)
        return center_crop(frames, self.resolution)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 T x 3 x R x R -> float32, (x / 255 - mean) / std, contiguous.

        The same operations in the same order as torchvision's ToDtype(scale=True) + Normalize
        (identical bytes), written out to skip their per-call dispatch; the conversion to float and
        the scaling share one pass (the uint8 values are exact in float32, and both multiply in float32).
        """
        x = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)  # contiguous, whatever the input's layout
        torch.mul(frames, 1.0 / 255, out=x)
        return x.sub_(self._mean).div_(self._std)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize_crop(frames))


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """... x H x W -> ... x size x size: the centre, zero-padded where a side is shorter than size.

    torchvision's center_crop, written out: padding splits odd amounts with the extra pixel after
    (right / bottom), and the crop's offset is round((side - size) / 2) with Python's round.
    """
    h, w = frames.shape[-2:]
    if h < size or w < size:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        frames = nnf.pad(frames, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2], value=0)
        h, w = frames.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


def build_frame_transform(resolution: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                          interpolation: str = "bicubic", resize_mode: str = "shortest") -> FrameTransform:
    """The frame transform for an encoder with this input resolution and preprocessing config."""
    return FrameTransform(resolution, mean, std, interpolation, resize_mode)


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
