"""Cost of the start-up data checks at MSR-VTT scale.

    python bench/bench_data_checks.py [--captions 180000] [--videos 200] [--workers 2]

- annotation check: check_annotation_files on an MSR-VTT layout with `--captions` training
  sentences (9,000 listed videos) and the 1,000-row test file: parse + validate;
- truncation count: count_long_captions over the same captions (CLIP BPE, max_words 32), against
  tokenising every caption (timed on 5,000 of them and scaled up);
- video probe: probe_videos over `--videos` synthetic clips (6 s, 64x64, 8 fps; 12 frames at
  1 fps) with 1 and `--workers` threads, then the rerun that the cache answers.
Captions are drawn (Zipf) from 20,000 ASCII whole-word entries of CLIP's vocabulary, 6 to 36
words each, so the number of distinct words is close to a real (English, ASCII) caption corpus;
captions with other characters are tokenised whole, at the "every caption" rate. Figures depend on the
machine's load: run it on an idle machine for numbers worth quoting.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvr.dataloaders import DataConfig, check_annotation_files  # noqa: E402
from tvr.dataloaders.base import count_long_captions  # noqa: E402
from tvr.dataloaders.probe import probe_videos  # noqa: E402
from tvr.dataloaders.synthetic import render_frames, write_video  # noqa: E402
from tvr.models.tokenization_clip import SimpleTokenizer, default_tokenizer, tokenize  # noqa: E402


def make_captions(n: int, seed: int = 0) -> list[str]:
    tok = default_tokenizer()
    words = [w[:-4] for w in tok.encoder if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha()][-20000:]
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 37, size=n)
    ranks = np.minimum(rng.zipf(1.2, size=int(lengths.sum())), len(words)) - 1
    out, k = [], 0
    for length in lengths:
        out.append(" ".join(words[r] for r in ranks[k:k + length]))
        k += length
    return out


def write_msrvtt(folder: str, captions: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    sentences = [{"video_id": f"video{i % 9000}", "caption": c, "sen_id": i} for i, c in enumerate(captions)]
    with open(os.path.join(folder, "MSRVTT_data.json"), "w") as f:
        json.dump({"videos": [], "sentences": sentences}, f)
    with open(os.path.join(folder, "MSRVTT_train.9k.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["video_id"]] + [[f"video{i}"] for i in range(9000)])
    with open(os.path.join(folder, "MSRVTT_JSFUSION_test.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["key", "vid_key", "video_id", "sentence"]] +
                                [[f"ret{i}", f"msr{i}", f"video{9000 + i}", captions[i]] for i in range(1000)])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=180000)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    captions = make_captions(args.captions)
    print(f"{len(captions)} captions, {len({w for c in captions for w in c.split()})} distinct words")
    with tempfile.TemporaryDirectory() as tmp:
        write_msrvtt(os.path.join(tmp, "anns"), captions)
        cfg = DataConfig(anno_path=os.path.join(tmp, "anns"))
        _, seconds = timed(lambda: check_annotation_files(cfg, splits=("train", "test")))
        print(f"annotation check (parse + validate train and test): {seconds:.2f} s")

        long, seconds = timed(lambda: count_long_captions(captions, 32, SimpleTokenizer()))
        print(f"truncation count: {long} captions over 32 tokens, {seconds:.2f} s")
        sample = captions[:5000]
        fresh = SimpleTokenizer()
        _, sample_seconds = timed(lambda: [tokenize(c, 33, tokenizer=fresh) for c in sample])
        print(f"tokenising every caption instead: about {sample_seconds * len(captions) / len(sample):.1f} s "
              f"(5,000 timed, scaled up)")

        spec = {"events": [{"colour": "red", "shape": "circle", "direction": "left", "offset": 0},
                           {"colour": "blue", "shape": "square", "direction": "up", "offset": 0}]}
        frames = render_frames(spec, 64, 24)  # 48 frames: 6 s at 8 fps
        paths = []
        for i in range(args.videos):
            paths.append(os.path.join(tmp, f"video{i}.mp4"))
            write_video(paths[-1], frames, 8.0)
        vcfg = DataConfig(max_frames=12, video_framerate=1.0)
        for workers in sorted({1, args.workers}):
            _, seconds = timed(lambda: probe_videos(paths, vcfg, workers=workers, progress=False))
            print(f"video probe, {workers} thread(s): {seconds:.2f} s for {len(paths)} videos "
                  f"({len(paths) / seconds:.0f} videos/s)")
        cache = os.path.join(tmp, "probe.json")
        probe_videos(paths, vcfg, workers=args.workers, cache_path=cache, progress=False)
        _, seconds = timed(lambda: probe_videos(paths, vcfg, workers=args.workers, cache_path=cache, progress=False))
        print(f"video probe rerun answered by the cache: {seconds:.3f} s")


if __name__ == "__main__":
    main()
