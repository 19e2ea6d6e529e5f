"""The built-in synthetic dataset: layout, readability, determinism, temporal hard pairs."""
import csv
import filecmp
import json
import os
import re

import numpy as np
import pytest

from tvr.dataloaders import DataConfig, build_eval_dataset
from tvr.dataloaders.base import RetrievalSplit
from tvr.dataloaders.synthetic import (COLOURS, DIRECTIONS, OPPOSITE, SHAPES, captions_for, generate, main,
                                       make_specs, render_frames)
from tvr.engine.evaluate import load_temporal_queries, temporal_metrics
from tvr.dataloaders.video_reader import read_frames

NUM_TRAIN, NUM_TEST = 14, 10
# Known answers for seed 0 (test_rendered_frames_are_pinned), computed once with NumPy 2.4 / OpenCV 5.0.
EXPECTED_FIRST_CAPTION = "a yellow square moves up then a red circle moves left"
EXPECTED_FIRST_TWIN_KIND = EXPECTED_SECOND_TWIN_KIND = "order"
EXPECTED_RENDER_SHA256 = "21d22a79e4a2ba0b1e673b8b436624dbef8833366d2a0de678335e2088948fab"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthetic") / "ds")
    summary = generate(out, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=3, workers=2)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_is_msrvtt(dataset):
    out, summary = dataset
    anns = os.path.join(out, "anns")
    assert sorted(os.listdir(anns)) == ["MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json", "MSRVTT_train.7k.csv",
                                        "MSRVTT_train.9k.csv", "temporal_queries.json"]
    videos = sorted(os.listdir(os.path.join(out, "videos")))
    assert len(videos) == NUM_TRAIN + NUM_TEST and all(v.endswith(".avi") for v in videos)
    train = [r["video_id"] for r in read_csv(os.path.join(anns, "MSRVTT_train.9k.csv"))]
    train7 = [r["video_id"] for r in read_csv(os.path.join(anns, "MSRVTT_train.7k.csv"))]
    test = read_csv(os.path.join(anns, "MSRVTT_JSFUSION_test.csv"))
    assert train == [f"video{i}" for i in range(NUM_TRAIN)] and train7 == train[:int(NUM_TRAIN * 0.72)]
    assert list(test[0]) == ["key", "vid_key", "video_id", "sentence"] and len(test) == NUM_TEST
    assert not set(train) & {r["video_id"] for r in test}
    data = json.load(open(os.path.join(anns, "MSRVTT_data.json")))
    by_video = {}
    for s in data["sentences"]:
        by_video.setdefault(s["video_id"], []).append(s["caption"])
    assert set(by_video) == {f"video{i}" for i in range(NUM_TRAIN + NUM_TEST)}
    assert all(len(c) == 3 for c in by_video.values())
    for row in test:  # the query is one of the video's captions
        assert row["sentence"] == by_video[row["video_id"]][0]
    # test queries are unique, so each has exactly one right video
    assert len({r["sentence"] for r in test}) == NUM_TEST
    assert summary["frames_per_video"] == 48


def test_captions_use_a_small_vocabulary_of_appearance_and_motion(dataset):
    out, _ = dataset
    data = json.load(open(os.path.join(out, "anns", "MSRVTT_data.json")))
    words = {w for s in data["sentences"] for w in re.findall(r"[a-z]+", s["caption"])}
    assert words <= set(COLOURS) | set(SHAPES) | set(DIRECTIONS) | {
        "a", "moves", "then", "first", "and", "goes", "before"}
    for s in data["sentences"]:  # two objects with colour + shape, each with a direction
        assert len(re.findall("|".join(COLOURS), s["caption"])) == 2
        assert len(re.findall("|".join(DIRECTIONS), s["caption"])) == 2


def test_videos_decode_with_the_loader(dataset):
    import decord

    out, _ = dataset
    vr = decord.VideoReader(os.path.join(out, "videos", "video0.avi"))
    assert len(vr) == 48 and vr.get_avg_fps() == pytest.approx(8.0) and vr[0].shape == (64, 64, 3)
    cfg = DataConfig(anno_path=os.path.join(out, "anns"), video_path=os.path.join(out, "videos"),
                     input_resolution=64, max_frames=12, video_framerate=2.0)
    video, mask = RetrievalSplit(cfg, "test").load_video(0)
    assert mask.tolist() == [1] * 12 and video.shape == (12, 3, 64, 64)
    # the colour of the first event's object is what the caption says
    data = json.load(open(os.path.join(out, "anns", "MSRVTT_data.json")))
    spec = data["videos"][0]["synthetic"]
    frame = vr[4].asnumpy().reshape(-1, 3).astype(float)
    obj = frame[frame.sum(1) > 150]
    assert len(obj) > 50
    np.testing.assert_allclose(obj.mean(0), COLOURS[spec["events"][0]["colour"]], atol=40)


def test_temporal_pairs_differ_only_in_time(dataset):
    out, _ = dataset
    anns = os.path.join(out, "anns")
    tq = json.load(open(os.path.join(anns, "temporal_queries.json")))
    test = read_csv(os.path.join(anns, "MSRVTT_JSFUSION_test.csv"))
    specs = {v["video_id"]: v["synthetic"] for v in json.load(open(os.path.join(anns, "MSRVTT_data.json")))["videos"]}
    assert len(tq["pairs"]) == NUM_TEST // 4  # hard_fraction 0.5 -> 5 of 10 videos, 2 pairs
    assert tq["video_ids"] == [test[i]["video_id"] for i in tq["query_indices"]]
    assert {p["kind"] for p in tq["pairs"]} == {"direction", "order"}  # both kinds at this seed
    ev = build_eval_dataset(DataConfig(anno_path=anns, video_path=os.path.join(out, "videos")), "test")
    for p in tq["pairs"]:
        a, b = specs[p["video_id"]]["events"], specs[p["twin"]]["events"]
        if p["kind"] == "order":
            assert a == b[::-1]
        else:
            diff = [i for i in range(2) if a[i] != b[i]]
            assert len(diff) == 1 and b[diff[0]]["direction"] == OPPOSITE[a[diff[0]]["direction"]]
            assert {k: v for k, v in a[diff[0]].items() if k != "direction"} == \
                   {k: v for k, v in b[diff[0]].items() if k != "direction"}
        # same set of images, different order: a bag-of-frames score cannot separate them
        fa, fb = render_frames({"events": a}, 64, 24), render_frames({"events": b}, 64, 24)
        assert sorted(map(bytes, fa)) == sorted(map(bytes, fb)) and not np.array_equal(fa, fb)
        # both are evaluation queries, each pointing at its own video
        qa, qb = (ev.video_ids.index(v) for v in (p["video_id"], p["twin"]))
        assert qa != qb and ev.captions[qa] != ev.captions[qb]
        assert ev.captions[qa] == captions_for({"events": a})[0]


def test_deterministic_for_a_seed(dataset, tmp_path):
    out, _ = dataset
    again = str(tmp_path / "again")
    main(["--output_dir", again, "--num_train", str(NUM_TRAIN), "--num_test", str(NUM_TEST),
          "--seed", "3", "--workers", "1"])
    for sub in ("anns", "videos"):
        names = sorted(os.listdir(os.path.join(out, sub)))
        assert names == sorted(os.listdir(os.path.join(again, sub)))
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(out, sub), os.path.join(again, sub), names, shallow=False)
        assert not mismatch and not errors
    other = str(tmp_path / "other")
    generate(other, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=4, workers=1)
    assert open(os.path.join(other, "anns", "MSRVTT_JSFUSION_test.csv")).read() != \
        open(os.path.join(out, "anns", "MSRVTT_JSFUSION_test.csv")).read()


def test_too_many_test_videos_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="distinct test videos"):
        generate(str(tmp_path), num_train=1, num_test=100000, workers=1)


def test_temporal_metrics_on_twin_pairs(dataset):
    import torch

    out, _ = dataset
    anns = os.path.join(out, "anns")
    temporal = load_temporal_queries(anns)
    assert load_temporal_queries(out) is None  # no file: a real dataset
    ev = build_eval_dataset(DataConfig(anno_path=anns, video_path=os.path.join(out, "videos")), "test")
    n = len(ev.video_ids)
    perfect = torch.eye(n)
    m = temporal_metrics(perfect, ev.query_to_video, ev.video_ids, temporal)
    assert m == {"temporal_R1": 100.0, "twin_accuracy": 100.0, "num_temporal_queries": 4}
    # a time-blind score: twins tie with the right video -> no hit, no win
    blind = torch.eye(n)
    for p in temporal["pairs"]:
        a, b = ev.video_ids.index(p["video_id"]), ev.video_ids.index(p["twin"])
        blind[a, b] = blind[b, a] = 1.0
    m = temporal_metrics(blind, ev.query_to_video, ev.video_ids, temporal)
    assert m["temporal_R1"] == 0.0 and m["twin_accuracy"] == 0.0
    # the first pair ranked the wrong way round, the other right
    p = temporal["pairs"][0]
    a, b = ev.video_ids.index(p["video_id"]), ev.video_ids.index(p["twin"])
    swapped = torch.eye(n)
    swapped[a, b] = swapped[b, a] = 2.0
    m = temporal_metrics(swapped, ev.query_to_video, ev.video_ids, temporal)
    assert m["twin_accuracy"] == 50.0 and m["temporal_R1"] == 50.0


@pytest.mark.parametrize("sequential", [False, True], ids=["decord-seek", "opencv-sequential"])
def test_videos_decode_to_exactly_the_rendered_frames(dataset, sequential):
    """The stored videos are lossless: the loader's decoders give back the renderer's pixels exactly
    (tolerance 0 grey levels), so another encoder build cannot silently change the data."""
    out, summary = dataset
    data = json.load(open(os.path.join(out, "anns", "MSRVTT_data.json")))
    per_event = summary["frames_per_video"] // 2
    for v in data["videos"][:6]:
        want = render_frames(v["synthetic"], summary["frame_size"], per_event)[..., ::-1]  # BGR -> RGB
        every = read_frames(os.path.join(out, "videos", v["video_id"] + ".avi"),
                            lambda n, fps: np.arange(0, n, 3 if sequential else 5), sequential=sequential)
        assert every.sequential == sequential and every.num_frames == len(want)
        np.testing.assert_array_equal(every.frames, want[every.indices])


def test_rendered_frames_are_pinned():
    """Known answer: the specs drawn for seed 0 and their rendered pixels. A change of NumPy's
    generator or of OpenCV's anti-aliased drawing changes the dataset; this makes it loud."""
    import hashlib

    specs, twins = make_specs(8, np.random.default_rng(0), 64, 0.5, unique=False)
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(render_frames(spec, 64, 24).tobytes())
    assert captions_for(specs[0])[0] == EXPECTED_FIRST_CAPTION
    assert twins == [(0, 1, EXPECTED_FIRST_TWIN_KIND), (2, 3, EXPECTED_SECOND_TWIN_KIND)]
    assert digest.hexdigest() == EXPECTED_RENDER_SHA256


def test_generator_starts_without_importing_torch():
    """`python -m tvr.dataloaders.synthetic` (the first step of `bash train.sh`) needs NumPy and OpenCV
    only; importing the data package must not pull in torch and torchvision (seconds of start-up)."""
    import subprocess
    import sys

    code = "import sys, tvr.dataloaders.synthetic; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
