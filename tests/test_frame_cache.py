"""--cache_frames: each video decoded once per run; items identical to decoding every time."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tvr.dataloaders import DataConfig, VideoDecodeError, build_eval_dataset, build_train_dataset
from tvr.dataloaders.frame_cache import build_frame_cache, frames_to_cache
from tvr.dataloaders.synthetic import generate
from tvr.models.tokenization_clip import tokenize


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache") / "ds")
    generate(out, num_train=6, num_test=4, seed=1, workers=1)
    return out


def cfg_for(out, **kw):
    kw = {"input_resolution": 32, "max_frames": 6, "video_framerate": 1.0, **kw}
    return DataConfig(anno_path=os.path.join(out, "anns"), video_path=os.path.join(out, "videos"), **kw)


def items(ds, seed=0):
    torch.manual_seed(seed)  # frame jitter draws from torch's global generator
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("jitter", [False, True], ids=["fixed", "jitter"])
def test_cached_items_equal_decoded_items(dataset, jitter):
    plain = build_train_dataset(cfg_for(dataset, frame_jitter=jitter))
    cached = build_train_dataset(cfg_for(dataset, frame_jitter=jitter, cache_frames=True))
    assert plain.data.frame_cache is None and cached.data.frame_cache is not None
    assert cached.data.frame_cache.frames.is_shared()
    for seed in (0, 1):  # two "epochs": different jitter draws, both served from the cache
        for a, b in zip(items(plain, seed), items(cached, seed)):
            assert torch.equal(a["video"], b["video"]) and torch.equal(a["video_mask"], b["video_mask"])
            assert torch.equal(a["text_ids"], b["text_ids"]) and torch.equal(a["text_mask"], b["text_mask"])
    if jitter:  # the draws really differ between epochs
        assert not all(torch.equal(a["video"], b["video"]) for a, b in zip(items(cached, 0), items(cached, 1)))


class CountingTokenizer:
    """CLIP's BPE, recording how many captions each call tokenizes."""

    def __init__(self):
        self.calls = []

    def tokenize(self, texts, max_words):
        self.calls.append(len(texts))
        return tokenize(texts, max_words)


def test_cached_split_tokenizes_its_captions_once_up_front(dataset):
    tok = CountingTokenizer()
    cached = build_train_dataset(cfg_for(dataset, cache_frames=True), tokenizer=tok)
    queries = build_eval_dataset(cfg_for(dataset, cache_frames=True), "test", tokenizer=tok).texts
    tok.calls.clear()  # building counts the long captions and tokenizes every caption once
    plain = build_train_dataset(cfg_for(dataset))
    for _ in range(2):  # epochs
        for i in range(len(cached)):
            assert torch.equal(cached[i]["text_ids"], plain[i]["text_ids"])
        for i in range(len(queries)):
            assert queries[i]["text_ids"].dtype == torch.long
    assert tok.calls == []
    uncached = build_train_dataset(cfg_for(dataset), tokenizer=tok)
    tok.calls.clear()
    uncached[0]
    assert tok.calls == [1]  # without the cache a caption is tokenized when its item is loaded
    item = cached[0]
    item["text_ids"].zero_()  # an item owns its tensors: writing to one leaves the table intact
    assert torch.equal(cached[0]["text_ids"], plain[0]["text_ids"])


def test_cache_holds_only_the_sampled_frames_without_jitter(dataset):
    cache = build_train_dataset(cfg_for(dataset, cache_frames=True)).data.frame_cache
    # 48 frames at 8 fps sampled at 1 fps: frames 0, 8, ..., 40 of each of the 6 videos
    assert cache.frames.shape == (6 * 6, 3, 32, 32) and cache.frames.dtype == torch.uint8
    assert cache.indices[:6].tolist() == list(range(0, 48, 8)) and cache.offsets.tolist() == list(range(0, 37, 6))
    # with jitter every frame of every segment: 0..47
    assert frames_to_cache(48, 8.0, video_framerate=1.0, max_frames=6, slice_framepos=2, jitter=True).tolist() == \
        list(range(48))


def test_cache_serves_dataloader_workers(dataset):
    ds = build_train_dataset(cfg_for(dataset, cache_frames=True))
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    videos = torch.cat([b["video"] for b in loader])
    plain = build_train_dataset(cfg_for(dataset))
    assert torch.equal(videos, torch.stack([plain[i]["video"] for i in range(len(plain))]))


def test_eval_split_is_cached_too(dataset):
    ev = build_eval_dataset(cfg_for(dataset, cache_frames=True), "test")
    plain = build_eval_dataset(cfg_for(dataset), "test")
    assert ev.videos.data.frame_cache is not None
    for i in range(len(ev.videos)):
        assert torch.equal(ev.videos[i]["video"], plain.videos[i]["video"])


def test_undecodable_video_raises_as_without_cache(dataset, tmp_path):
    import shutil

    out = str(tmp_path / "ds")
    shutil.copytree(dataset, out)
    bad = os.path.join(out, "videos", "video2.avi")
    with open(bad, "wb") as f:
        f.write(b"not a video" * 50)
    ds = build_train_dataset(cfg_for(out, cache_frames=True))
    assert set(ds.data.frame_cache.errors) == {2}
    with pytest.raises(VideoDecodeError, match="video2.avi"):
        ds.data.load_video(2)
    item = ds[2 * 3]  # the first caption of video2: replaced by another sample, as without the cache
    assert item["replaced"] and ds.data.caption_video[item["index"]] != 2


def test_too_large_a_cache_is_refused_before_decoding(dataset):
    split = build_train_dataset(cfg_for(dataset)).data
    with pytest.raises(ValueError, match=r"--cache_frames: 6 videos x 6 frames x 3 x 32 x 32 need .* budget"):
        build_frame_cache(split, max_bytes=1000)  # the estimate, before anything is decoded
    with pytest.raises(ValueError, match="--cache_frames.*--frame_jitter"):
        build_frame_cache(split, jitter=True, max_bytes=10 * 3 * 32 * 32, workers=0)


def test_changed_sampling_after_caching_is_an_error(dataset):
    ds = build_train_dataset(cfg_for(dataset, cache_frames=True))
    ds.data.cfg.video_framerate = 2.0  # frames 0, 4, 8, ... were never cached
    with pytest.raises(RuntimeError, match="not cached"):
        ds.data.load_video(0)
    np.testing.assert_equal(ds.data.frame_cache.num_frames.tolist(), [48] * 6)
