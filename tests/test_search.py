"""Search your own videos (tvr.search): index, query, resume, increments, several processes, bad input.

A tiny synthetic dataset and a scratch:tiny checkpoint written by main.main (one epoch) stand in
for a user's videos and trained model."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main as main_module
from tvr.dataloaders import build_eval_dataset
from tvr.dataloaders.synthetic import main as synthetic_main
from tvr.dataloaders.video_reader import sample_frame_indices
from tvr.engine.evaluate import evaluate
from tvr.engine.model_io import checkpoint_payload, load_trained_model
from tvr.search.__main__ import main as search_main
from tvr.search.index import IndexOptions, build_index
from tvr.search.query import Searcher, best_frame
from tvr.search.store import IndexReader, SearchIndexError, Shard, list_shards, read_manifest
from tvr.search.videos import VideoLoader
from tvr.utils.checkpoint import atomic_save
from tvr.utils.launch import Runtime
from .spawn import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
OPTS = dict(workers=0, batch_size=4, shard_size=4, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_data")
    synthetic_main(["--output_dir", str(root), "--num_train", "12", "--num_test", "6", "--seed", "5", "--workers", "1"])
    return root


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("search_ckpt")
    main_module.main([
        "--anno_path", str(dataset / "anns"), "--video_path", str(dataset / "videos"), "--base_encoder", "scratch:tiny",
        "--output_dir", str(out), "--max_words", "16", "--max_frames", "4", "--video_framerate", "1",
        "--batch_size", "12", "--batch_size_val", "6", "--workers", "0", "--epochs", "1", "--lr", "1e-3",
        "--coef_lr", "1", "--loss", "softmax", "--seed", "1", "--do_train",
    ])
    return str(out / "best.pth")


@pytest.fixture(scope="module")
def index_dir(dataset, checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("search_index") / "idx")
    build_index(checkpoint, str(dataset / "videos"), out, IndexOptions(**OPTS), CPU)
    return out


def video_copy(dataset, tmp_path, names=None):
    folder = tmp_path / "videos"
    folder.mkdir()
    for f in sorted(os.listdir(dataset / "videos")):
        if names is None or f in names:
            shutil.copy2(dataset / "videos" / f, folder / f)
    return folder


def stored(index):
    """key -> (tokens of every branch, masks, timestamps) as numpy, read through IndexReader."""
    reader = IndexReader(index)
    batches = reader.fetch(np.arange(len(reader)))
    return {e.key: ([b.tokens[i].numpy() for b in batches], [b.mask[i].numpy() for b in batches],
                    reader.timestamps(i)) for i, e in enumerate(reader.entries)}


def assert_same_index(a, b, atol=2e-3):
    sa, sb = stored(a), stored(b)
    assert sorted(sa) == sorted(sb)
    for key in sa:
        for x, y in zip(sa[key][0], sb[key][0]):
            np.testing.assert_allclose(x, y, atol=atol, err_msg=key)
        for x, y in zip(sa[key][1], sb[key][1]):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(sa[key][2], sb[key][2])


# ---- index and query -------------------------------------------------------------------------------
def test_index_stores_the_models_tokens_and_frame_times(dataset, checkpoint, index_dir):
    manifest = read_manifest(index_dir)
    files = sorted(os.listdir(dataset / "videos"))
    assert [v["key"] for v in manifest["videos"]] == files
    assert manifest["failed"] == []
    for v in manifest["videos"]:
        st = os.stat(dataset / "videos" / v["key"])
        assert (v["size"], v["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    model, run_cfg = load_trained_model(checkpoint)
    data = build_eval_dataset(run_cfg.data, "test", tokenizer=model.clip.tokenizer)  # the evaluation's loader
    got = stored(index_dir)
    import decord

    for i in range(2):
        item = data.videos[i]
        with torch.no_grad():
            ref = model.encode_video(item["video"][None], item["video_mask"][None])
        key = data.video_ids[i] + ".avi"
        for j, b in enumerate(model.config.active_branches):
            np.testing.assert_allclose(got[key][0][j], ref[b].tokens[0].numpy(), atol=2e-3)
            np.testing.assert_array_equal(got[key][1][j], ref[b].mask[0].numpy())
        vr = decord.VideoReader(str(dataset / "videos" / key))
        fps = vr.get_avg_fps()
        idx = sample_frame_indices(len(vr), fps, run_cfg.data.video_framerate, run_cfg.data.max_frames,
                                   run_cfg.data.slice_framepos)
        np.testing.assert_allclose(got[key][2][:len(idx)], idx / fps, rtol=1e-6)


def test_exhaustive_ranks_equal_evaluation(checkpoint, index_dir):
    """Searching the index scores exactly as main.py --do_eval does (its similarity matrix rows)."""
    model, run_cfg = load_trained_model(checkpoint)
    data = build_eval_dataset(run_cfg.data, "test", tokenizer=model.clip.tokenizer)
    _, sim = evaluate(model, data, CPU, batch_size=3)  # Nq x Nv, evaluation order
    searcher = Searcher(index_dir)
    text, _ = searcher.encode_queries(data.captions)
    scores = searcher.exhaustive_scores(text)
    total = torch.stack(list(scores.values())).sum(0)  # Nq x N (every indexed video)
    keys = [e.key for e in searcher.reader.entries]
    cols = [keys.index(v + ".avi") for v in data.video_ids]
    ours = total[:, cols]
    torch.testing.assert_close(ours, sim.float(), atol=2e-3, rtol=0)
    # Same order in every row; only two videos whose evaluation scores are within the float16 storage
    # error of each other (2e-3) may swap.
    near_tie = ((sim[:, :, None] - sim[:, None, :]).abs() < 2e-3).sum() > sim.numel()
    if not near_tie:
        assert torch.equal(ours.argsort(dim=1, descending=True), sim.argsort(dim=1, descending=True))
    above = sim[:, :, None] > sim[:, None, :] + 2e-3  # Nq x Nv x Nv: video a clearly above video b
    assert (ours[:, :, None] > ours[:, None, :])[above].all()
    # each branch against the model's own scoring of the evaluation loader's videos
    with torch.no_grad():
        items = [data.videos[i] for i in range(3)]
        ref = model.branch_scores(text, model.encode_video(torch.stack([it["video"] for it in items]),
                                                           torch.stack([it["video_mask"] for it in items])))
    for b in ref:
        torch.testing.assert_close(scores[b][:, cols[:3]], ref[b], atol=2e-3, rtol=0)
    # and search() returns the same order over the whole index, with the per-branch split
    results = searcher.search(data.captions[:3], top=len(keys))
    for qi, res in enumerate(results):
        assert [h.row for h in res.hits] == total[qi].argsort(descending=True).tolist()
        for h in res.hits:
            assert h.score == pytest.approx(sum(h.scores.values()), abs=1e-5)


def test_query_cli_table_and_json(index_dir, tmp_path, capsys):
    queries = tmp_path / "q.txt"
    queries.write_text("a red circle moves left\n\na blue square moves up\n")
    assert search_main(["query", "--index", index_dir, "--queries", str(queries), "--top", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line["query"] for line in lines] == ["a red circle moves left", "a blue square moves up"]
    manifest = read_manifest(index_dir)
    duration = {v["key"]: v["duration"] for v in manifest["videos"]}
    for line in lines:
        res = line["results"]
        assert len(res) == 3
        assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
        for r in res:
            assert set(r["scores"]) == {"frame", "video"}
            assert 0 <= r["best_time"] < duration[r["video"]]
    assert search_main(["query", "--index", index_dir, "a red circle", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "s_frame" in out and "best_time" in out and out.count(".avi") == 2


def test_best_frame_counts_votes_not_mean_similarity():
    """Hand-made case: two query tokens pick frame 0 exactly, three lean to frame 1 (0.6) and
    nearly as much to frame 2 (0.59). Frame 0 has the best mean similarity (0.4 vs 0.36), but
    frame 1 gets the most votes; the padded frame 3 would beat everything if it were read."""
    e = torch.eye(5)
    lean = 0.6 * e[1] + 0.59 * e[2] + (1 - 0.6 ** 2 - 0.59 ** 2) ** 0.5 * e[4]
    q = torch.stack([e[0], e[0], lean, lean, lean])
    frames = torch.stack([e[0], e[1], e[2], 10 * lean])
    assert best_frame(q, frames, torch.tensor([1, 1, 1, 0])) == 1
    assert best_frame(q[:2], frames, torch.tensor([1, 1, 1, 0])) == 0
    assert best_frame(q, frames, torch.tensor([1, 0, 0, 0])) == 0
    assert best_frame(q, frames, torch.zeros(4)) is None


def test_fetch_returns_the_requested_rows_across_shards(index_dir):
    reader = IndexReader(index_dir)
    everything = reader.fetch(np.arange(len(reader)))
    rows = np.random.default_rng(0).permutation(len(reader))[:9]
    assert len({reader.entries[r].shard for r in rows}) > 1
    some = reader.fetch(rows)
    for a, b in zip(some, everything):
        assert torch.equal(a.tokens, b.tokens[rows]) and torch.equal(a.mask, b.mask[rows])


def test_prefetch_announces_exactly_the_rows_fetch_reads(index_dir, monkeypatch):
    """Every announced byte range is one requested row of one branch's tokens, read back from the file
    (an independent expectation: the bytes at the advised offsets are the tokens fetch returns)."""
    reader = IndexReader(index_dir)
    rows = np.random.default_rng(1).permutation(len(reader))[:7]
    advised = []
    opened = {}
    real_open = os.open

    def recording_open(path, flags):
        fd = real_open(path, flags)
        opened[fd] = path
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: advised.append(
        (opened[fd], offset, length, advice)), raising=False)
    reader.prefetch(rows)
    assert len(advised) == len(rows) * len(reader.branches)
    assert all(advice == os.POSIX_FADV_WILLNEED for *_, advice in advised)
    expected = set()
    for b, batch in zip(reader.branches, reader.fetch(rows)):
        for tokens in batch.tokens:
            expected.add(tokens.half().numpy().tobytes())
    found = set()
    for path, offset, length, _ in advised:
        with open(path, "rb") as f:
            f.seek(offset)
            found.add(f.read(length))
    assert found == expected


def test_best_time_is_the_frame_most_query_tokens_pick(index_dir):
    searcher = Searcher(index_dir)
    res = searcher.search(["a red circle moves left"], top=1)[0]
    text, _ = searcher.encode_queries(["a red circle moves left"])
    frames = searcher.reader.fetch(np.array([res.hits[0].row]))[0]
    q = text.tokens[0][text.mask[0].bool()]
    votes = [0] * frames.tokens.shape[1]
    for qi in q:  # loop reference: each query token votes for its best real frame
        sims = [float(qi @ f) if m else -1e9 for f, m in zip(frames.tokens[0], frames.mask[0])]
        votes[int(np.argmax(sims))] += 1
    expected = searcher.reader.timestamps(res.hits[0].row)[int(np.argmax(votes))]
    assert res.hits[0].best_time == pytest.approx(float(expected))


# ---- resume, increments, processes -----------------------------------------------------------------
def test_resume_after_sigkill_matches_a_clean_index(dataset, checkpoint, index_dir, tmp_path):
    out = tmp_path / "idx"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "tvr.search", "index", "--checkpoint", checkpoint, "--videos", str(dataset / "videos"),
           "--out", str(out), "--workers", "0", "--batch_size", "1", "--shard_size", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list_shards(str(out))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list_shards(str(out)))
    assert 3 <= done_before < 18, "the run was not killed midway"
    for path in list_shards(str(out)):
        Shard(path)  # every shard on disk is complete
    summary = build_index(checkpoint, str(dataset / "videos"), str(out), IndexOptions(**OPTS), CPU)
    assert summary.encoded == 18 - done_before and summary.unchanged == done_before
    assert not [f for f in os.listdir(out / "shards") if f.endswith(".tmp")]
    assert_same_index(str(out), index_dir)


def test_incremental_add_change_remove(dataset, checkpoint, tmp_path):
    names = sorted(os.listdir(dataset / "videos"))[:6]
    videos = video_copy(dataset, tmp_path, names)
    out = str(tmp_path / "idx")
    first = build_index(checkpoint, str(videos), out, IndexOptions(**OPTS), CPU)
    assert (first.encoded, first.total) == (6, 6)
    before = {v["key"]: v for v in read_manifest(out)["videos"]}
    shutil.copy2(dataset / "videos" / sorted(os.listdir(dataset / "videos"))[10], videos / "added.avi")
    os.utime(videos / names[1], ns=(time.time_ns(), time.time_ns()))  # changed (new mtime)
    os.remove(videos / names[2])
    second = build_index(checkpoint, str(videos), out, IndexOptions(**OPTS), CPU)
    assert (second.encoded, second.unchanged, second.removed, second.total) == (2, 4, 1, 6)
    after = {v["key"]: v for v in read_manifest(out)["videos"]}
    assert names[2] not in after and "added.avi" in after
    for key in (names[0], names[3], names[4], names[5]):  # untouched: same entry, not re-encoded
        assert after[key] == before[key]
    assert after[names[1]]["vid"] > before[names[1]]["vid"]
    third = build_index(checkpoint, str(videos), out, IndexOptions(**OPTS), CPU)
    assert third.encoded == 0
    live_shards = {v["shard"] for v in after.values()}
    assert {os.path.basename(p) for p in list_shards(out)} == live_shards  # fully stale shards deleted
    fresh = str(tmp_path / "fresh")
    build_index(checkpoint, str(videos), fresh, IndexOptions(**OPTS), CPU)
    assert_same_index(out, fresh)


def test_two_processes_build_the_one_process_index(dataset, checkpoint, index_dir, tmp_path):
    out = tmp_path / "idx2"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tvr.search", "index", "--checkpoint", checkpoint,
           "--videos", str(dataset / "videos"), "--out", str(out), "--workers", "0", "--batch_size", "2",
           "--shard_size", "3", "--device", "cpu"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list_shards(str(out))) >= 2
    assert_same_index(str(out), index_dir)
    a = {v["key"]: v["vid"] for v in read_manifest(str(out))["videos"]}
    b = {v["key"]: v["vid"] for v in read_manifest(index_dir)["videos"]}
    assert a == b
    q = ["a red circle moves left", "a green triangle moves down"]
    ra, rb = Searcher(str(out)).search(q, top=5), Searcher(index_dir).search(q, top=5)
    assert [[h.key for h in r.hits] for r in ra] == [[h.key for h in r.hits] for r in rb]


def test_ann_search_through_the_index(dataset, checkpoint, tmp_path, capsys):
    names = sorted(os.listdir(dataset / "videos"))
    videos = video_copy(dataset, tmp_path, names[:14])
    out = str(tmp_path / "idx")
    assert search_main(["index", "--checkpoint", checkpoint, "--videos", str(videos), "--out", out, "--workers", "0",
                        "--shard_size", "5", "--ann", "--ann_pq_m", "16"]) == 0
    assert read_manifest(out)["ann"]["pq_m"] == 16
    shutil.copy2(dataset / "videos" / names[15], videos / names[15])  # incremental: its shard gets coded too
    assert search_main(["index", "--checkpoint", checkpoint, "--videos", str(videos), "--out", out, "--workers", "0"]) == 0
    searcher = Searcher(out)
    queries = ["a red circle moves left", "a yellow square moves up then a blue circle moves down"]
    from tvr.search.ann import AnnSearchConfig

    exact = searcher.search(queries, top=5)
    announced = []
    real_prefetch = searcher.reader.prefetch
    searcher.reader.prefetch = lambda rows: announced.append(rows) or real_prefetch(rows)
    approx = searcher.search(queries, top=5, ann=AnnSearchConfig(nprobe=64, centroid_candidates=64,
                                                                    pq_candidates=64, rerank=64))
    assert [sorted(r.tolist()) for r in announced] == [list(range(15))] * 2  # the re-rank reads are announced
    for e, a in zip(exact, approx):  # a 15-video index: every video is a candidate, re-ranked exactly
        assert [h.key for h in a.hits] == [h.key for h in e.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in e.hits], atol=1e-5)
    capsys.readouterr()
    assert search_main(["query", "--index", out, "--ann", "--json", "--top", "15", "a red circle"]) == 0
    assert names[15] in {r["video"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert search_main(["index", "--checkpoint", checkpoint, "--videos", str(videos), "--out", out, "--workers", "0",
                        "--ann", "0"]) == 0
    assert read_manifest(out)["ann"] is None and not os.path.exists(os.path.join(out, "ann"))
    assert search_main(["query", "--index", out, "--ann", "1", "a red circle"]) == 2
    assert "no ANN data" in capsys.readouterr().err


# ---- bad input ----------------------------------------------------------------------------------
def test_missing_index_and_missing_manifest(tmp_path, capsys):
    assert search_main(["query", "--index", str(tmp_path / "nope"), "x"]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert search_main(["query", "--index", str(tmp_path / "empty"), "x"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_corrupt_manifest_is_rebuilt_from_shards(dataset, checkpoint, tmp_path, capsys):
    videos = video_copy(dataset, tmp_path, sorted(os.listdir(dataset / "videos"))[:5])
    out = tmp_path / "idx"
    build_index(checkpoint, str(videos), str(out), IndexOptions(**OPTS), CPU)
    good = stored(str(out))
    (out / "manifest.json").write_text('{"format": "videocolbert-search-index", "vide')
    assert search_main(["query", "--index", str(out), "a red circle"]) == 2
    err = capsys.readouterr().err
    assert str(out / "manifest.json") in err and "rebuild" in err
    summary = build_index(checkpoint, str(videos), str(out), IndexOptions(**OPTS), CPU)
    assert summary.encoded == 0 and summary.total == 5
    after = stored(str(out))
    assert sorted(after) == sorted(good)


def test_corrupt_shard_is_named_and_only_its_videos_are_encoded_again(dataset, checkpoint, tmp_path, capsys):
    videos = video_copy(dataset, tmp_path, sorted(os.listdir(dataset / "videos"))[:10])
    out = tmp_path / "idx"
    build_index(checkpoint, str(videos), str(out), IndexOptions(**OPTS), CPU)  # shards of 4, 4, 2 videos
    victim = list_shards(str(out))[1]
    with open(victim, "r+b") as f:
        f.truncate(100)
    assert search_main(["query", "--index", str(out), "a red circle"]) == 2
    assert os.path.basename(victim) in capsys.readouterr().err
    summary = build_index(checkpoint, str(videos), str(out), IndexOptions(**OPTS), CPU)
    assert summary.encoded == 4 and summary.unchanged == 6 and summary.total == 10
    assert os.path.exists(victim + ".corrupt")


def test_checkpoint_of_another_model_is_refused(dataset, checkpoint, index_dir, tmp_path, capsys):
    model, run_cfg = load_trained_model(checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    other = str(tmp_path / "other.pth")
    atomic_save(checkpoint_payload(model, run_cfg), other)
    before = open(os.path.join(index_dir, "manifest.json"), "rb").read()
    assert search_main(["query", "--index", index_dir, "--checkpoint", other, "a red circle"]) == 2
    err = capsys.readouterr().err
    assert other in err and checkpoint in err and "weights differ" in err
    with pytest.raises(SearchIndexError, match="not with"):
        build_index(other, str(dataset / "videos"), index_dir, IndexOptions(**OPTS), CPU)
    assert open(os.path.join(index_dir, "manifest.json"), "rb").read() == before
    shutil.copy2(checkpoint, tmp_path / "copy.pth")  # the same file elsewhere is fine
    assert search_main(["query", "--index", index_dir, "--checkpoint", str(tmp_path / "copy.pth"), "a red circle"]) == 0


def test_empty_folder_is_refused_and_the_index_kept(checkpoint, index_dir, tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("not a video")
    before = stored(index_dir)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        build_index(checkpoint, str(tmp_path / "none"), index_dir, IndexOptions(**OPTS), CPU)
    assert sorted(stored(index_dir)) == sorted(before)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_index(checkpoint, str(tmp_path / "missing"), str(tmp_path / "idx"), IndexOptions(**OPTS), CPU)


def test_long_query_is_truncated_with_a_notice(index_dir, capsys):
    long_query = " ".join(["a red circle moves left then a blue square moves up"] * 3)
    res = Searcher(index_dir).search([long_query, "a red circle"], top=2)
    assert res[0].truncated and not res[1].truncated
    assert search_main(["query", "--index", index_dir, long_query]) == 0
    assert "longer than the model's 16 tokens" in capsys.readouterr().err


def test_unreadable_video_is_listed_not_dropped(dataset, checkpoint, tmp_path, capsys):
    videos = video_copy(dataset, tmp_path, sorted(os.listdir(dataset / "videos"))[:3])
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    out = str(tmp_path / "idx")
    code = search_main(["index", "--checkpoint", checkpoint, "--videos", str(videos), "--out", out, "--workers", "0"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "1 failed" in printed and "broken.mp4" in printed
    manifest = read_manifest(out)
    assert [f["key"] for f in manifest["failed"]] == ["broken.mp4"] and "decode" in manifest["failed"][0]["error"]
    assert "broken.mp4" not in [v["key"] for v in manifest["videos"]] and len(manifest["videos"]) == 3
    # a later run tries it again and still lists it; nothing indexed is lost
    assert search_main(["index", "--checkpoint", checkpoint, "--videos", str(videos), "--out", out, "--workers", "0"]) == 1
    assert len(read_manifest(out)["videos"]) == 3


def test_loader_matches_the_evaluation_loader(dataset, checkpoint):
    model, run_cfg = load_trained_model(checkpoint)
    data = build_eval_dataset(run_cfg.data, "test")
    item = data.videos[0]
    got = VideoLoader(run_cfg.data)(str(dataset / "videos" / (data.video_ids[0] + ".avi")))
    assert torch.equal(got.video, item["video"]) and torch.equal(got.mask, item["video_mask"])
