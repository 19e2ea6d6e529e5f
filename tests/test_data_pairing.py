"""Every caption travels with ITS video's pixels, and the videos are distinct clips.

Checked on the built-in synthetic set, whose captions name the colours of its two objects in the
order they appear ("a red circle moves left then a blue square moves up"): the colours seen in an
item's frames, read back from the normalised tensors, must be the caption's, in order. A loader that
pairs a caption with another video, or a dataset whose videos are all one clip, fails here.
"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from tvr.dataloaders import DataConfig, build_eval_dataset, build_train_dataset
from tvr.dataloaders.synthetic import COLOURS, main as synthetic_main, render_frames
from tvr.models.tokenization_clip import default_tokenizer

RESOLUTION = 64  # the synthetic frame size: frames reach the model unresized


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_pairing")
    synthetic_main(["--output_dir", str(root), "--num_train", "8", "--num_test", "4", "--seed", "5", "--workers", "1"])
    return root


@pytest.fixture(scope="module")
def cfg(synthetic):
    return DataConfig(anno_path=str(synthetic / "anns"), video_path=str(synthetic / "videos"), max_words=32,
                      max_frames=4, video_framerate=1, input_resolution=RESOLUTION)


def caption_of(text_ids, text_mask) -> str:
    ids = text_ids[text_mask.bool()].tolist()[1:-1]  # drop <|startoftext|> and <|endoftext|>
    return default_tokenizer().decode(ids).strip()


def caption_colours(caption: str):
    return [w for w in caption.split() if w in COLOURS]


def to_rgb(frame, cfg) -> torch.Tensor:
    """3 x R x R normalised -> 3 x R x R in [0, 255]."""
    mean = torch.tensor(cfg.image_mean).view(3, 1, 1)
    std = torch.tensor(cfg.image_std).view(3, 1, 1)
    return (frame * std + mean) * 255


def frame_colour(frame, cfg) -> str:
    """Name of the colour of the object in a frame (black background elsewhere)."""
    rgb = to_rgb(frame, cfg)
    lit = rgb.max(0).values > 80
    assert lit.sum() >= 10, "no object in this frame"
    mean = rgb[:, lit].mean(1)
    return min(COLOURS, key=lambda c: float(((mean - torch.tensor(COLOURS[c], dtype=mean.dtype)) ** 2).sum()))


def assert_pixels_match_caption(video, video_mask, caption, cfg):
    first, second = caption_colours(caption)
    seen = [frame_colour(f, cfg) for f, real in zip(video, video_mask) if real]
    assert len(seen) >= 2, caption
    # the first object's colour, then the second's, nothing else
    assert seen[0] == first and seen[-1] == second, (caption, seen)
    assert seen == sorted(seen, key=lambda c: c == second), (caption, seen)


def test_training_videos_are_distinct_clips(synthetic, cfg):
    videos = sorted((synthetic / "videos").iterdir())
    assert len(videos) == 12
    for path in videos:
        assert not path.is_symlink(), path
    assert len({os.stat(p).st_ino for p in videos}) == len(videos)  # no hard links either
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in videos}) == len(videos)
    data = build_train_dataset(cfg)
    decoded = {}
    for i in range(len(data)):
        item = data[i]
        decoded.setdefault(hashlib.sha256(item["video"].numpy().tobytes()).hexdigest(), set()).add(caption_of(item["text_ids"], item["text_mask"]))
    assert len(decoded) == 8  # 8 training videos, 8 different pixel contents


def test_every_training_item_carries_its_captions_video(synthetic, cfg):
    data = build_train_dataset(cfg)
    assert len(data) == 8 * 3  # three captions per video
    for i in range(len(data)):
        item = data[i]
        assert not item["replaced"]
        assert_pixels_match_caption(item["video"], item["video_mask"], caption_of(item["text_ids"], item["text_mask"]), cfg)


def test_training_frames_are_the_rendered_frames(synthetic, cfg):
    """Stronger than colours, where the renderer allows it: the first frame of each item is the
    rendered first frame of the video its caption describes (lossless video, no resize)."""
    meta = json.loads((synthetic / "anns" / "MSRVTT_data.json").read_text())
    spec_of_caption = {}
    for s in meta["sentences"]:
        spec = next(v["synthetic"] for v in meta["videos"] if v["video_id"] == s["video_id"])
        spec_of_caption.setdefault(s["caption"], []).append(spec)
    data = build_train_dataset(cfg)
    for i in range(len(data)):
        item = data[i]
        specs = spec_of_caption[caption_of(item["text_ids"], item["text_mask"])]
        got = to_rgb(item["video"][0], cfg).permute(1, 2, 0).numpy()  # R x R x 3, RGB
        errors = [np.abs(got - render_frames(spec, RESOLUTION, 24)[0][..., ::-1]).max() for spec in specs]
        assert min(errors) < 1.5, (i, errors)


def test_every_test_query_points_at_its_video(synthetic, cfg):
    data = build_eval_dataset(cfg, "test")
    assert len(data.texts) == 4
    for q in range(len(data.texts)):
        text = data.texts[q]
        video = data.videos[int(data.query_to_video[q])]
        assert_pixels_match_caption(video["video"], video["video_mask"], caption_of(text["text_ids"], text["text_mask"]), cfg)
