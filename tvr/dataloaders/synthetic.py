"""Built-in synthetic dataset in the MSR-VTT layout: a retrieval task that needs time.

    python -m tvr.dataloaders.synthetic --output_dir DIR [--num_train N] [--num_test M] [--seed S]

writes
    DIR/videos/video<i>.avi                    (64x64, 8 fps, 6 s = 48 frames; lossless, see below)
    DIR/anns/MSRVTT_data.json                  all captions (3 per video)
    DIR/anns/MSRVTT_train.9k.csv               all training videos
    DIR/anns/MSRVTT_train.7k.csv               the first 72% of them (MSR-VTT's 6513/9000)
    DIR/anns/MSRVTT_JSFUSION_test.csv          one query per test video (caption template 0)
    DIR/anns/temporal_queries.json             the test queries that need temporal information
Videos are written first, then the annotation files (each under a temporary name, renamed when
complete), MSRVTT_data.json last: if it exists, the dataset is complete.

Scheme. Every video shows two events, one after the other, on a black background: first
object A (a colour and a shape) crosses the frame in direction d1 while nothing else is
visible, then object B (different colour and shape) crosses in direction d2. Vocabulary:
colours red/green/blue/yellow, shapes circle/square/triangle, directions left/right/up/down.
Captions state both events in order, e.g. "a red circle moves left then a blue square moves up"
(three templates with the same content; template 0 is the test query).

Temporal hard pairs. A fraction (--hard_fraction, default 0.5) of the videos of each split come
in adjacent twin pairs that differ only in time:
- "direction": one event runs backwards (left<->right or up<->down), same objects and path;
- "order": the two events are swapped.
A twin's frames are (nearly) the same set of images in a different order, so no per-frame or
bag-of-frames score can tell the twins apart: only a model that uses frame order can rank the
right one first. temporal_queries.json lists, for the test split, the query indices (= rows of
MSRVTT_JSFUSION_test.csv = evaluation query indices), their video ids, and the twin pairs with
their kind. `temporal_metrics(sim, query_to_video, video_ids, load_temporal_queries(anno_path))`
gives R@1 on those queries and the twin accuracy (own video scored above its twin; 50% = blind
to time, which is where a frame-only model sits).

With --video_framerate 2 --max_frames 12 the loader keeps 12 frames (every 4th), 6 per event;
with --video_framerate 1, 6 frames. Output is deterministic for a given seed and arguments
(identical bytes), whatever the number of worker processes.

Videos are stored losslessly (PNG-coded frames in AVI, written by OpenCV's FFmpeg): decoding
gives back exactly the rendered pixels (`render_frames`, callable without writing anything), so the
data do not depend on an encoder's version, CPU-specific code or rate control, as a lossy codec's
output does (tests/test_synthetic.py checks decoded == rendered).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing as mp
import os
import time

import numpy as np

logger = logging.getLogger(__name__)

COLOURS = {  # RGB, saturated and far apart so 64 px frames stay unambiguous
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 245),
    "yellow": (240, 220, 30),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TEMPLATES = (
    "a {c1} {s1} moves {d1} then a {c2} {s2} moves {d2}",
    "first a {c1} {s1} moves {d1} and then a {c2} {s2} moves {d2}",
    "a {c1} {s1} goes {d1} before a {c2} {s2} goes {d2}",
)


# ------------------------------------------------------------------------- specs and captions
def random_event(rng: np.random.Generator, frame_size: int, avoid: dict | None = None) -> dict:
    colours = [c for c in COLOURS if avoid is None or c != avoid["colour"]]
    shapes = [s for s in SHAPES if avoid is None or s != avoid["shape"]]
    max_off = max(1, frame_size // 10)
    return {"colour": colours[rng.integers(len(colours))], "shape": shapes[rng.integers(len(shapes))],
            "direction": DIRECTIONS[rng.integers(len(DIRECTIONS))],
            "offset": int(rng.integers(-max_off, max_off + 1))}


def captions_for(spec: dict) -> list[str]:
    a, b = spec["events"]
    words = dict(c1=a["colour"], s1=a["shape"], d1=a["direction"],
                 c2=b["colour"], s2=b["shape"], d2=b["direction"])
    return [t.format(**words) for t in TEMPLATES]


def make_twin(spec: dict, rng: np.random.Generator) -> tuple[dict, str]:
    """A video with the same objects and paths that differs only in time."""
    a, b = (dict(e) for e in spec["events"])
    if rng.random() < 0.5:
        which = int(rng.integers(2))
        flipped = [a, b]
        flipped[which]["direction"] = OPPOSITE[flipped[which]["direction"]]
        return {"events": flipped}, "direction"
    return {"events": [b, a]}, "order"


def num_distinct_specs() -> int:
    """Distinct captions: object A x direction, object B (other colour, other shape) x direction."""
    n_obj = len(COLOURS) * len(SHAPES)
    n_other = (len(COLOURS) - 1) * (len(SHAPES) - 1)
    return n_obj * n_other * len(DIRECTIONS) ** 2


def make_specs(num: int, rng: np.random.Generator, frame_size: int, hard_fraction: float,
               unique: bool) -> tuple[list[dict], list[tuple[int, int, str]]]:
    """`num` video specs, the twin pairs first (adjacent), then independent videos.

    unique: no two specs share a caption (needed for the test split, so that every query has
    exactly one right video; training captions may repeat). Returns the specs and the twin
    pairs as (index, index, kind) within the returned list.
    """
    if unique and num > num_distinct_specs():
        raise ValueError(f"at most {num_distinct_specs()} distinct test videos exist, asked for {num}")
    specs: list[dict] = []
    twins: list[tuple[int, int, str]] = []
    taken: set[str] = set()
    num_pairs = int(round(num * hard_fraction)) // 2

    def fresh() -> dict:
        while True:
            a = random_event(rng, frame_size)
            spec = {"events": [a, random_event(rng, frame_size, avoid=a)]}
            if not unique or captions_for(spec)[0] not in taken:
                return spec

    while len(twins) < num_pairs:
        spec = fresh()
        twin, kind = make_twin(spec, rng)
        if unique and captions_for(twin)[0] in taken:
            continue
        for s in (spec, twin):
            taken.add(captions_for(s)[0])
            specs.append(s)
        twins.append((len(specs) - 2, len(specs) - 1, kind))
    while len(specs) < num:
        spec = fresh()
        taken.add(captions_for(spec)[0])
        specs.append(spec)
    return specs, twins


# ------------------------------------------------------------------------- rendering
def _draw(img_bgr: np.ndarray, shape: str, cx: float, cy: float, r: int, rgb) -> None:
    import cv2

    colour = tuple(int(c) for c in rgb[::-1])  # OpenCV draws BGR
    x, y = int(round(cx)), int(round(cy))
    if shape == "circle":
        cv2.circle(img_bgr, (x, y), r, colour, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(img_bgr, (x - r + 1, y - r + 1), (x + r - 1, y + r - 1), colour, -1, cv2.LINE_AA)
    elif shape == "triangle":
        pts = np.array([[x, y - r], [x - r, y + int(0.8 * r)], [x + r, y + int(0.8 * r)]], np.int32)
        cv2.fillPoly(img_bgr, [pts], colour, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_frames(spec: dict, frame_size: int, frames_per_event: int) -> np.ndarray:
    """Frames (BGR uint8, T x H x W x 3) of one video spec."""
    radius = max(2, int(round(frame_size * 0.15)))
    lo, hi = 0.2 * frame_size, 0.8 * frame_size - 1
    mid = (frame_size - 1) / 2
    out = np.zeros((2 * frames_per_event, frame_size, frame_size, 3), np.uint8)
    t = 0
    for event in spec["events"]:
        for k in range(frames_per_event):
            s = k / max(1, frames_per_event - 1)
            along = {"right": lo + s * (hi - lo), "left": hi - s * (hi - lo),
                     "down": lo + s * (hi - lo), "up": hi - s * (hi - lo)}[event["direction"]]
            across = mid + event["offset"]
            cx, cy = (along, across) if event["direction"] in ("left", "right") else (across, along)
            _draw(out[t], event["shape"], cx, cy, radius, COLOURS[event["colour"]])
            t += 1
    return out


# The synthetic videos' codec and container: PNG frames are lossless (exact RGB) and decode fast;
# AVI because its files come out byte-identical run after run (Matroska writes a random segment id).
LOSSLESS_CODEC, VIDEO_EXT = "png ", ".avi"


def write_video(path: str, frames_bgr: np.ndarray, fps: float, codec: str = "mp4v") -> None:
    """Write BGR frames with OpenCV; codec is a FourCC ("mp4v": lossy MPEG-4, "png ": lossless)."""
    import cv2

    h, w = frames_bgr.shape[1:3]
    tmp = path + ".part" + os.path.splitext(path)[1]
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {codec.strip()} video {tmp} (its FFmpeg lacks the encoder?)")
    try:
        for frame in frames_bgr:
            writer.write(frame)
    finally:
        writer.release()
    os.replace(tmp, path)


def _render_job(job: tuple[str, dict, int, int, float]) -> str:
    path, spec, frame_size, frames_per_event, fps = job
    write_video(path, render_frames(spec, frame_size, frames_per_event), fps, codec=LOSSLESS_CODEC)
    return path


# ------------------------------------------------------------------------- dataset
def generate(output_dir: str, num_train: int = 1000, num_test: int = 200, seed: int = 0,
             frame_size: int = 64, fps: float = 8.0, event_seconds: float = 3.0,
             hard_fraction: float = 0.5, workers: int | None = None) -> dict:
    """Write the dataset; returns a summary dict (counts, paths, seconds)."""
    if num_train < 1 or num_test < 2:
        raise ValueError("need num_train >= 1 and num_test >= 2")
    start = time.time()
    rng = np.random.default_rng(seed)
    train_specs, _ = make_specs(num_train, rng, frame_size, hard_fraction, unique=False)
    test_specs, test_twins = make_specs(num_test, rng, frame_size, hard_fraction, unique=True)
    specs = train_specs + test_specs
    video_ids = [f"video{i}" for i in range(len(specs))]
    frames_per_event = max(2, int(round(fps * event_seconds)))

    video_dir = os.path.join(output_dir, "videos")
    anno_dir = os.path.join(output_dir, "anns")
    os.makedirs(video_dir, exist_ok=True)
    os.makedirs(anno_dir, exist_ok=True)
    jobs = [(os.path.join(video_dir, vid + VIDEO_EXT), spec, frame_size, frames_per_event, fps)
            for vid, spec in zip(video_ids, specs)]
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _render_job(job)

    duration = 2 * frames_per_event / fps
    videos, sentences = [], []
    for i, (vid, spec) in enumerate(zip(video_ids, specs)):
        split = "train" if i < num_train else "test"
        videos.append({"video_id": vid, "category": 0, "url": "", "start time": 0.0,
                       "end time": duration, "split": split, "id": i, "synthetic": spec})
        for cap in captions_for(spec):
            sentences.append({"caption": cap, "video_id": vid, "sen_id": len(sentences)})
    data = {"info": {"description": "VideoColBERT synthetic dataset", "seed": seed},
            "videos": videos, "sentences": sentences}
    train_ids = video_ids[:num_train]
    test_ids = video_ids[num_train:]

    def write(name: str, fill) -> None:
        # temporary name + rename: a file that exists is complete
        path = os.path.join(anno_dir, name)
        with open(path + ".part", "w", encoding="utf-8", newline="") as f:
            fill(f)
        os.replace(path + ".part", path)

    def csv_rows(header, rows):
        def fill(f):
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return fill

    write("MSRVTT_train.9k.csv", csv_rows(["video_id"], [[v] for v in train_ids]))
    write("MSRVTT_train.7k.csv", csv_rows(["video_id"], [[v] for v in train_ids[:max(1, int(len(train_ids) * 0.72))]]))
    write("MSRVTT_JSFUSION_test.csv", csv_rows(
        ["key", "vid_key", "video_id", "sentence"],
        [[f"ret{i}", f"msr{vid[len('video'):]}", vid, captions_for(spec)[0]]
         for i, (vid, spec) in enumerate(zip(test_ids, test_specs))]))
    pairs = [{"video_id": test_ids[a], "twin": test_ids[b], "kind": kind} for a, b, kind in test_twins]
    temporal = sorted(i for a, b, _ in test_twins for i in (a, b))
    write("temporal_queries.json", lambda f: json.dump(
        {"description": "Test queries (rows of MSRVTT_JSFUSION_test.csv, i.e. evaluation query indices) "
                        "whose video has a twin in the test set differing only in the direction of one "
                        "motion or in the order of the two events.",
         "query_indices": temporal, "video_ids": [test_ids[i] for i in temporal], "pairs": pairs}, f, indent=1))
    write("MSRVTT_data.json", lambda f: json.dump(data, f))  # last: its presence marks a complete dataset
    return {"output_dir": output_dir, "num_train": num_train, "num_test": num_test,
            "num_temporal_queries": len(temporal), "frames_per_video": 2 * frames_per_event,
            "fps": fps, "frame_size": frame_size, "seconds": time.time() - start}


# ------------------------------------------------------------------------- temporal evaluation
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame_size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--fps", type=float, default=8.0, help="native frame rate of the videos")
    p.add_argument("--event_seconds", type=float, default=3.0, help="duration of each of the 2 events")
    p.add_argument("--hard_fraction", type=float, default=0.5,
                   help="fraction of videos in temporal twin pairs (per split)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    args = p.parse_args(argv)
    summary = generate(args.output_dir, args.num_train, args.num_test, args.seed, args.frame_size,
                       args.fps, args.event_seconds, args.hard_fraction, args.workers or None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
