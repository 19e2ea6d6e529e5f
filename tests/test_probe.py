"""The start-up video probe: every failing evaluation video reported at once, before training;
passing videos cached so a resumed run does not decode them again."""
import json
import logging
import os

import numpy as np
import pytest

from tvr.dataloaders import DataConfig, build_eval_dataset
from tvr.dataloaders import probe as probe_module
from tvr.dataloaders.probe import UndecodableVideosError, check_eval_videos, probe_videos
from tvr.dataloaders.synthetic import render_frames, write_video

from .test_data_datasets import cfg_for, clip_file, write_msrvtt  # noqa: F401  (clip_file: fixture)

CFG = DataConfig(max_frames=3, video_framerate=2.0)  # 16 frames at 8 fps: stride 4, candidates 0 4 8 12


@pytest.fixture()
def videos(tmp_path):
    """Four good videos, one truncated copy (its index is cut off), one of random bytes, one missing."""
    spec = {"events": [{"colour": "green", "shape": "triangle", "direction": "right", "offset": 0},
                       {"colour": "red", "shape": "circle", "direction": "down", "offset": 0}]}
    good = []
    for i in range(4):
        path = str(tmp_path / f"good{i}.mp4")
        write_video(path, render_frames(spec, 32, 8), 8.0)
        good.append(path)
    truncated = str(tmp_path / "truncated.mp4")
    data = open(good[0], "rb").read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    noise = str(tmp_path / "noise.mp4")
    with open(noise, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    missing = str(tmp_path / "missing.mp4")
    return good, [truncated, noise, missing]


@pytest.fixture()
def count_decodes(monkeypatch):
    """Record every path the probe tries to decode (and, on success, the frame indices decoded)."""
    calls = []
    real = probe_module.read_frames

    def recording(path, index_fn, num_threads=1):
        entry = [path, None]
        calls.append(entry)  # list.append is atomic: safe from the probe's threads
        decoded = real(path, index_fn, num_threads=num_threads)
        entry[1] = decoded.indices.tolist()
        return decoded

    monkeypatch.setattr(probe_module, "read_frames", recording)
    return calls


def test_all_failures_reported_at_once_in_input_order(videos):
    good, bad = videos
    paths = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    for workers in (1, 3):
        failures = probe_videos(paths, CFG, workers=workers, progress=False)
        assert [p for p, _ in failures] == bad
        reasons = dict(failures)
        assert "decord" in reasons[bad[0]] and "opencv" in reasons[bad[0]]  # both backends were tried
        assert "does not exist" in reasons[bad[2]]


def test_probe_decodes_the_frames_evaluation_samples(videos, count_decodes):
    good, _ = videos
    assert probe_videos(good[:1], CFG, workers=1, progress=False) == []
    # stride round(8 / 2) = 4 -> candidates 0, 4, 8, 12; three kept uniformly: positions 0, 1.5 -> 2, 3
    assert count_decodes == [[good[0], [0, 8, 12]]]


def test_cache_skips_passed_videos_and_notices_changes(videos, tmp_path, count_decodes):
    good, bad = videos
    cache = str(tmp_path / "probe_cache.json")
    paths = good + bad[:2]
    assert len(probe_videos(paths, CFG, workers=2, cache_path=cache, progress=False)) == 2
    assert sorted(p for p, _ in count_decodes) == sorted(good + bad[:2])
    stored = json.load(open(cache))["passed"]
    assert sorted(stored) == sorted(os.path.abspath(p) for p in good)  # failures are not cached

    count_decodes.clear()  # a resumed run re-checks only the failures
    assert len(probe_videos(paths, CFG, workers=2, cache_path=cache, progress=False)) == 2
    assert sorted(p for p, _ in count_decodes) == sorted(bad[:2])

    count_decodes.clear()  # a rewritten file (new mtime) is probed again
    st = os.stat(good[1])
    os.utime(good[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    probe_videos(paths, CFG, workers=1, cache_path=cache, progress=False)
    assert sorted(p for p, _ in count_decodes) == sorted([good[1]] + bad[:2])

    count_decodes.clear()  # other sampling settings decode other frames: everything again
    probe_videos(paths, DataConfig(max_frames=4, video_framerate=2.0), workers=1, cache_path=cache,
                 progress=False)
    assert sorted(p for p, _ in count_decodes) == sorted(paths)

    with open(cache, "w") as f:  # a damaged cache is ignored, not fatal
        f.write("{not json")
    assert len(probe_videos(paths, CFG, workers=1, cache_path=cache, progress=False)) == 2


def test_check_eval_videos_raises_one_error_naming_every_file(videos, caplog):
    good, bad = videos
    with pytest.raises(UndecodableVideosError) as info:
        check_eval_videos(good + bad, CFG, workers=2, progress=False)
    message = str(info.value)
    assert message.startswith("3 of 7 evaluation videos cannot be decoded")
    assert all(p in message for p in bad) and not any(p in message for p in good)
    assert "--allow_decode_errors" in message
    assert [p for p, _ in info.value.failures] == bad

    allowed = DataConfig(max_frames=3, video_framerate=2.0, allow_decode_errors=True)
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.probe"):
        failures = check_eval_videos(good + bad, allowed, workers=2, progress=False)
    assert [p for p, _ in failures] == bad
    assert all(p in caplog.text for p in bad) and "never retrieved" in caplog.text
    assert check_eval_videos(good, CFG, workers=2, progress=False) == []


def test_check_eval_videos_on_an_evaluation_split(tmp_path, clip_file):
    write_msrvtt(tmp_path, clip_file)
    cfg = cfg_for(tmp_path, "msrvtt")
    ev = build_eval_dataset(cfg, "test")
    assert check_eval_videos(ev, cfg, workers=1, progress=False) == []
    bad = tmp_path / "videos" / "video1.mp4"  # the second test video
    os.remove(bad)
    bad.write_bytes(b"not a video")
    with pytest.raises(UndecodableVideosError, match="1 of 2 evaluation videos") as info:
        check_eval_videos(ev, cfg, workers=1, progress=False)
    assert str(bad) in str(info.value)


def test_a_cached_split_is_not_decoded_again_and_its_failures_are_reported(tmp_path, clip_file, count_decodes):
    """With --cache_frames the cache has already decoded every evaluation frame with the loader's own
    code: the probe takes its failures and decodes nothing; an uncached split beside it is probed."""
    write_msrvtt(tmp_path, clip_file)
    bad = tmp_path / "videos" / "video1.mp4"  # the second test video
    os.remove(bad)
    bad.write_bytes(b"not a video")
    cached = build_eval_dataset(cfg_for(tmp_path, "msrvtt", cache_frames=True), "test")
    assert list(cached.videos.data.frame_cache.errors) == [1]
    cfg = cfg_for(tmp_path, "msrvtt")
    with pytest.raises(UndecodableVideosError, match="1 of 2 evaluation videos") as info:
        check_eval_videos([cached], cfg, workers=1, progress=False)
    assert [p for p, _ in info.value.failures] == [str(bad)]
    assert count_decodes == []  # nothing decoded a second time

    uncached = build_eval_dataset(cfg, "test")
    with pytest.raises(UndecodableVideosError, match="1 of 2 evaluation videos"):
        check_eval_videos([cached, uncached], cfg, workers=1, progress=False)
    assert sorted(p for p, _ in count_decodes) == sorted(uncached.videos.data.video_paths)

    good_video = str(tmp_path / "videos" / "video3.mp4")
    os.remove(bad)
    os.symlink(good_video, bad)
    count_decodes.clear()
    repaired = build_eval_dataset(cfg_for(tmp_path, "msrvtt", cache_frames=True), "test")
    assert check_eval_videos([repaired], cfg, workers=1, progress=False) == [] and count_decodes == []
