"""Test data whose captions name the colours of their video's pixels.

Each video shows one solid colour for its first half and another for its second half; its
caption says which ("red then blue"). A caption therefore identifies its video's pixels, so a
test can check pairing (the item's frames have the caption's colours) and learning (a model that
learns anything retrieves the right video far above chance) in seconds.
"""
import csv
import json
import os
from itertools import permutations

import numpy as np

COLOURS = {  # RGB, far apart
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 220, 40),
    "purple": (140, 40, 180),
    "white": (240, 240, 240),
    "orange": (245, 140, 20),
    "grey": (120, 120, 120),
}
FPS, FRAMES, SIZE = 4, 8, 32  # 2 s per video: one frame per second at --video_framerate 1


def caption(first: str, second: str) -> str:
    return f"{first} then {second}"


def write_video(path: str, first: str, second: str, rng: np.random.Generator) -> None:
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (SIZE, SIZE))
    assert writer.isOpened(), path
    for t in range(FRAMES):
        rgb = np.array(COLOURS[first if t < FRAMES // 2 else second], np.float64)
        frame = rgb * rng.uniform(0.85, 1.0) + rng.normal(0, 4, (SIZE, SIZE, 3))  # each video its own pixels
        writer.write(np.clip(frame, 0, 255).astype(np.uint8)[..., ::-1].copy())  # OpenCV writes BGR
    writer.release()


def make_dataset(root, num_test: int = 16, seed: int = 0) -> dict:
    """MSR-VTT layout under root/anns and root/videos. Training: every ordered colour pair (56
    videos); test: `num_test` new videos of distinct pairs. Returns {video_id: (first, second)}."""
    rng = np.random.default_rng(seed)
    pairs = list(permutations(COLOURS, 2))
    test_pairs = []  # no test pair is another's reverse: those differ only in order
    for i in rng.permutation(len(pairs)):
        if pairs[i][::-1] not in test_pairs and len(test_pairs) < num_test:
            test_pairs.append(pairs[i])
    videos = {f"train{i}": p for i, p in enumerate(pairs)}
    videos.update({f"test{i}": p for i, p in enumerate(test_pairs)})
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    os.makedirs(os.path.join(root, "anns"), exist_ok=True)
    for vid, (a, b) in videos.items():
        write_video(os.path.join(root, "videos", f"{vid}.mp4"), a, b, rng)
    sentences = [{"video_id": vid, "caption": caption(*p), "sen_id": i} for i, (vid, p) in enumerate(videos.items())]
    with open(os.path.join(root, "anns", "MSRVTT_data.json"), "w") as f:
        json.dump({"videos": [{"video_id": v} for v in videos], "sentences": sentences}, f)
    train_ids = [v for v in videos if v.startswith("train")]
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_train.7k.csv"):
        with open(os.path.join(root, "anns", name), "w", newline="") as f:
            csv.writer(f).writerows([["video_id"]] + [[v] for v in train_ids])
    with open(os.path.join(root, "anns", "MSRVTT_JSFUSION_test.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for i in range(num_test):
            w.writerow([f"ret{i}", f"msr{i}", f"test{i}", caption(*videos[f"test{i}"])])
    return videos
