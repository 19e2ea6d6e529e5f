"""Configuration of the data side (datasets, frame sampling, transforms).

One dataclass instead of a global argparse namespace, so library code and tests can build
datasets without a command line. `DataConfig.from_args(namespace)` picks the fields out of
main.py's argparse namespace (extra attributes are ignored, missing ones keep their defaults).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class DataConfig:
    # Which annotation reader to use (a key of tvr.dataloaders.DATASETS).
    datatype: str = "msrvtt"
    # Folder holding the dataset's annotation files (exact names per dataset: see README).
    anno_path: str = ""
    # Folder holding the videos, searched recursively; a video is found by its file name or stem.
    video_path: str = ""
    # Text length in CLIP BPE tokens including <|startoftext|> and <|endoftext|>.
    max_words: int = 32
    # Frames kept per video after sampling; shorter videos are zero-padded (video_mask = 0).
    max_frames: int = 12
    # Sampling rate in frames per second: stride = max(1, round(native_fps / video_framerate)).
    # <= 0 keeps every decoded frame (stride 1).
    video_framerate: float = 1.0
    # When more than max_frames candidates remain: 0 keep the head, 1 the tail, 2 uniform.
    slice_framepos: int = 2
    # Encoder input resolution: short side resized (bicubic) to this, then centre-cropped.
    input_resolution: int = 224
    # The backbone's image preprocessing (main.py copies the encoder's): normalisation mean / std,
    # resize interpolation, and resize mode ("shortest": short side + centre crop, as CLIP;
    # "squash": both sides to the resolution, as SigLIP; "longest": long side + zero padding).
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    # Training only: take a random frame inside each sampled segment instead of its first frame.
    frame_jitter: bool = False
    # MSR-VTT training list: "9k" (MSRVTT_train.9k.csv) or "7k" (MSRVTT_train.7k.csv).
    train_list: str = "9k"
    # Videos absent from video_path: False = error at start-up, True = drop their pairs (logged).
    drop_missing_videos: bool = False
    # Evaluation only: a video that cannot be decoded is scored as never retrieved
    # (failed=True, empty mask) instead of stopping the run. Training always replaces the sample.
    allow_decode_errors: bool = False
    # decord decoding threads per reader (0 = decord's automatic choice). With several
    # DataLoader workers 1 is usually fastest overall.
    decode_threads: int = 1
    # Decode MP4/MOV videos directly at the transform's resize size (decord scales while converting
    # to RGB) when that at least halves the pixels: faster on large videos; pixels within the
    # README's stated tolerance of resizing full frames. False: always decode full-size frames.
    decode_resize: bool = True
    # Decode every video of a split once per run and keep its resized uint8 frames in shared memory
    # (tvr/dataloaders/frame_cache.py) instead of decoding them again every epoch. For small datasets.
    cache_frames: bool = False
    # How many other samples a training item may try when its video fails to decode.
    max_replace_tries: int = 10
    # File extensions considered when indexing video_path (lower case, with the dot).
    video_extensions: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg",
                                         ".mpeg", ".flv", ".wmv", ".3gp")

    def __post_init__(self) -> None:
        if self.slice_framepos not in (0, 1, 2):
            raise ValueError(f"slice_framepos must be 0 (head), 1 (tail) or 2 (uniform), "
                             f"got {self.slice_framepos}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.max_words < 2:
            raise ValueError(f"max_words must be >= 2 (start and end tokens), got {self.max_words}")
        if self.input_resolution < 1:
            raise ValueError(f"input_resolution must be >= 1, got {self.input_resolution}")
        if self.train_list not in ("9k", "7k"):
            raise ValueError(f"train_list must be '9k' or '7k', got {self.train_list!r}")
        self.video_extensions = tuple(e.lower() for e in self.video_extensions)
        self.image_mean = tuple(float(v) for v in self.image_mean)  # lists from a JSON config too
        self.image_std = tuple(float(v) for v in self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values each (std > 0), got {self.image_mean}, "
                             f"{self.image_std}")
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ValueError(f"resize_mode must be shortest, squash or longest, got {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be bicubic, bilinear or nearest, got {self.interpolation!r}")

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> "DataConfig":
        """Build from any object with matching attributes (e.g. an argparse.Namespace)."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides:
                values[field.name] = overrides[field.name]
            elif hasattr(args, field.name):
                values[field.name] = getattr(args, field.name)
        return cls(**values)
