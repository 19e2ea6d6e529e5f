"""Datasets: every reader on a small fake annotation set in its exact published format, and the
bad-input rules (missing annotation files, missing videos, undecodable videos)."""
import csv
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tvr.dataloaders import (DATASETS, AnnotationFilesMissing, DataConfig, VideoDecodeError,
                             build_eval_dataset, build_train_dataset, check_annotation_files)
from tvr.dataloaders.base import RetrievalSplit
from tvr.dataloaders.synthetic import render_frames, write_video

MAX_FRAMES = 6
RES = 32


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """One tiny real mp4 (32x32, 16 frames at 8 fps -> 4 frames at 2 fps)."""
    path = str(tmp_path_factory.mktemp("clip") / "clip.mp4")
    spec = {"events": [{"colour": "red", "shape": "circle", "direction": "left", "offset": 0},
                       {"colour": "blue", "shape": "square", "direction": "up", "offset": 0}]}
    write_video(path, render_frames(spec, 32, 8), 8.0)
    return path


def make_videos(folder, names, clip_file):
    for name in names:
        dst = os.path.join(folder, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(clip_file, dst)


def cfg_for(tmp_path, datatype, **kw):
    return DataConfig(datatype=datatype, anno_path=str(tmp_path / "anns"), video_path=str(tmp_path / "videos"),
                      max_frames=MAX_FRAMES, video_framerate=2.0, input_resolution=RES, max_words=16, **kw)


def pairs(data):
    """(video_id, caption) of every training pair / evaluation query."""
    return [(data.video_ids[v], c) for c, v in zip(data.captions, data.caption_video)]


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)


# ----------------------------------------------------------------------------- MSR-VTT
def write_msrvtt(tmp_path, clip_file, videos=("video0", "video1", "video2", "video3")):
    anns = tmp_path / "anns"
    anns.mkdir()
    sentences = [("video0", "a man sings"), ("video1", "a dog runs"), ("video0", "someone is singing"),
                 ("video2", "cars race"), ("video3", "a cat sleeps"), ("video2", "a race on a track")]
    data = {"info": {}, "videos": [{"video_id": v, "split": "train"} for v in videos],
            "sentences": [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(sentences)]}
    (anns / "MSRVTT_data.json").write_text(json.dumps(data))
    write_csv(anns / "MSRVTT_train.9k.csv", ["video_id"], [["video0"], ["video1"], ["video2"]])
    write_csv(anns / "MSRVTT_train.7k.csv", ["video_id"], [["video2"], ["video0"]])
    write_csv(anns / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"],
              [["ret0", "msr3", "video3", "a cat is sleeping"], ["ret1", "msr1", "video1", "a dog running"]])
    make_videos(tmp_path / "videos", [f"{v}.mp4" for v in videos], clip_file)


def test_msrvtt_train_9k_7k_and_jsfusion_test(tmp_path, clip_file):
    write_msrvtt(tmp_path, clip_file)
    train = RetrievalSplit(cfg_for(tmp_path, "msrvtt"), "train")
    # every caption of every listed training video is its own pair, in list then file order
    assert pairs(train) == [("video0", "a man sings"), ("video0", "someone is singing"),
                            ("video1", "a dog runs"), ("video2", "cars race"), ("video2", "a race on a track")]
    train7 = RetrievalSplit(cfg_for(tmp_path, "msrvtt", train_list="7k"), "train")
    assert pairs(train7) == [("video2", "cars race"), ("video2", "a race on a track"),
                             ("video0", "a man sings"), ("video0", "someone is singing")]
    ev = build_eval_dataset(cfg_for(tmp_path, "msrvtt"), "test")
    assert ev.video_ids == ["video3", "video1"] and ev.captions == ["a cat is sleeping", "a dog running"]
    assert ev.query_to_video.tolist() == [0, 1] and not ev.multi_sentence
    val = build_eval_dataset(cfg_for(tmp_path, "msrvtt"), "val")  # no val set: test
    assert val.split == "test" and val.video_ids == ev.video_ids


def test_train_item_keys_shapes_and_padding(tmp_path, clip_file):
    write_msrvtt(tmp_path, clip_file)
    ds = build_train_dataset(cfg_for(tmp_path, "msrvtt"))
    item = ds[3]
    assert set(item) == {"text_ids", "text_mask", "video", "video_mask", "index", "replaced"}
    assert item["text_ids"].shape == item["text_mask"].shape == (16,)
    assert item["text_ids"].dtype == item["text_mask"].dtype == torch.long
    assert item["video"].shape == (MAX_FRAMES, 3, RES, RES) and item["video"].dtype == torch.float32
    assert item["video_mask"].tolist() == [1, 1, 1, 1, 0, 0]  # 16 frames at 8 fps, sampled at 2 fps
    assert item["video"][4:].abs().sum() == 0 and item["video"][:4].abs().amin(dim=(1, 2, 3)).gt(0).all()
    assert item["index"] == 3 and item["replaced"] is False
    n_tokens = int(item["text_mask"].sum())
    assert item["text_ids"][0] == 49406 and item["text_ids"][n_tokens - 1] == 49407  # SOT ... EOT
    ev = build_eval_dataset(cfg_for(tmp_path, "msrvtt"), "test")
    assert set(ev.texts[1]) == {"text_ids", "text_mask", "index"} and ev.texts[1]["index"] == 1
    v = ev.videos[0]
    assert set(v) == {"video", "video_mask", "index", "failed"} and v["failed"] is False
    torch.testing.assert_close(v["video"], item["video"])  # same file, no jitter


def test_dataloader_workers_collate_and_jitter(tmp_path, clip_file):
    write_msrvtt(tmp_path, clip_file)
    ds = build_train_dataset(cfg_for(tmp_path, "msrvtt", frame_jitter=True))
    loader = DataLoader(ds, batch_size=5, num_workers=1)
    batch = next(iter(loader))
    assert batch["video"].shape == (5, MAX_FRAMES, 3, RES, RES)
    assert batch["replaced"].dtype == torch.bool and not batch["replaced"].any()
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    # jitter draws from torch's RNG: reproducible under a seed, different across draws
    torch.manual_seed(0)
    a = ds[0]["video"]
    torch.manual_seed(0)
    b = ds[0]["video"]
    torch.testing.assert_close(a, b)
    others = [ds[0]["video"] for _ in range(4)]
    assert any(not torch.equal(a, o) for o in others)


# ----------------------------------------------------------------------------- MSVD
def test_msvd_multi_sentence(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    caps = {"vidA_1_5": [["a", "man", "rides"], ["man", "on", "a", "horse"]],
            "vidB_2_9": [["a", "girl", "sings"]],
            "vidC_0_3": [["cooking", "food"], ["a", "chef", "cooks"], ["someone", "fries", "eggs"]]}
    with open(anns / "raw-captions.pkl", "wb") as f:
        pickle.dump(caps, f)
    (anns / "train_list.txt").write_text("vidA_1_5\nvidB_2_9\n")
    (anns / "val_list.txt").write_text("vidB_2_9\n")
    (anns / "test_list.txt").write_text("vidC_0_3\nvidA_1_5\n")
    make_videos(tmp_path / "videos", ["vidA_1_5.avi", "vidB_2_9.avi", "vidC_0_3.avi"], clip_file)
    train = RetrievalSplit(cfg_for(tmp_path, "msvd"), "train")
    assert pairs(train) == [("vidA_1_5", "a man rides"), ("vidA_1_5", "man on a horse"), ("vidB_2_9", "a girl sings")]
    ev = build_eval_dataset(cfg_for(tmp_path, "msvd"), "test")
    assert ev.video_ids == ["vidC_0_3", "vidA_1_5"]
    assert ev.captions == ["cooking food", "a chef cooks", "someone fries eggs", "a man rides", "man on a horse"]
    assert ev.query_to_video.tolist() == [0, 0, 0, 1, 1] and ev.multi_sentence
    assert len(ev.texts) == 5 and len(ev.videos) == 2
    assert build_eval_dataset(cfg_for(tmp_path, "msvd"), "val").video_ids == ["vidB_2_9"]


# ----------------------------------------------------------------------------- LSMDC
def test_lsmdc_tab_separated_recursive_video_folders(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    c1, c2, c3 = ("1004_Juno_00.00.32.849-00.00.38.260", "1004_Juno_00.01.02.000-00.01.05.500",
                  "3009_BATTLE_LOS_ANGELES_00.03.07.170-00.03.09.675")
    row = lambda clip, s: [clip, "00.00.32.849", "00.00.38.260", "00.00.32.849", "00.00.38.260", s]  # noqa: E731
    write_csv(anns / "LSMDC16_annos_training.csv", None,
              [row(c1, "SOMEONE opens the door."), row(c2, "She smiles."), row(c1, "He walks in.")], "\t")
    write_csv(anns / "LSMDC16_annos_val.csv", None, [row(c2, "She smiles at him.")], "\t")
    write_csv(anns / "LSMDC16_challenge_1000_publictect.csv", None,
              [row(c3, "Soldiers run, guns raised."), row(c1, "SOMEONE enters.")], "\t")
    make_videos(tmp_path / "videos", [f"1004_Juno/{c1}.avi", f"1004_Juno/{c2}.avi",
                                      f"3009_BATTLE_LOS_ANGELES/{c3}.avi"], clip_file)
    train = RetrievalSplit(cfg_for(tmp_path, "lsmdc"), "train")
    assert pairs(train) == [(c1, "SOMEONE opens the door."), (c2, "She smiles."), (c1, "He walks in.")]
    assert train.video_paths[0].endswith(f"1004_Juno/{c1}.avi")
    ev = build_eval_dataset(cfg_for(tmp_path, "lsmdc"), "test")
    assert ev.video_ids == [c3, c1] and ev.captions == ["Soldiers run, guns raised.", "SOMEONE enters."]
    assert ev.query_to_video.tolist() == [0, 1]
    assert build_eval_dataset(cfg_for(tmp_path, "lsmdc"), "val").captions == ["She smiles at him."]


def test_lsmdc_malformed_row(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    (anns / "LSMDC16_annos_training.csv").write_text("clip_only\tno fields\n")
    make_videos(tmp_path / "videos", ["clip_only.avi"], clip_file)
    with pytest.raises(ValueError, match="line 1: expected 6"):
        RetrievalSplit(cfg_for(tmp_path, "lsmdc"), "train")


# ----------------------------------------------------------------------------- ActivityNet
def test_activitynet_paragraphs_and_v_prefix(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    entry = lambda sents: {"duration": 20.5, "timestamps": [[0, 5]] * len(sents), "sentences": sents}  # noqa: E731
    (anns / "train_ids.json").write_text(json.dumps(["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]))
    (anns / "train.json").write_text(json.dumps({
        "v_QOlSCBRmfWY": entry(["A young woman is seen standing.", " She then dances around. "]),
        "v_ehGHCYKzyZ8": entry(["A man plays a guitar."]),
        "v_unused00000": entry(["not in the id list"])}))
    (anns / "val_ids.json").write_text(json.dumps(["v_uqiMw7tQ1Cc"]))
    (anns / "val_1.json").write_text(json.dumps({"v_uqiMw7tQ1Cc": entry(["A weight lifter lifts.", "He drops it."])}))
    # files named without the prefix (CLIP4Clip) and with it: both resolve
    make_videos(tmp_path / "videos", ["QOlSCBRmfWY.mp4", "v_ehGHCYKzyZ8.mkv", "uqiMw7tQ1Cc.mp4"], clip_file)
    train = RetrievalSplit(cfg_for(tmp_path, "activity"), "train")
    assert pairs(train) == [("v_QOlSCBRmfWY", "A young woman is seen standing. She then dances around."),
                            ("v_ehGHCYKzyZ8", "A man plays a guitar.")]
    assert train.video_paths[1].endswith("v_ehGHCYKzyZ8.mkv")
    for split in ("val", "test"):  # test = val_1
        ev = build_eval_dataset(cfg_for(tmp_path, "activity"), split)
        assert ev.split == "val" and ev.paragraph
        assert ev.captions == ["A weight lifter lifts. He drops it."] and ev.query_to_video.tolist() == [0]


# ----------------------------------------------------------------------------- DiDeMo
def test_didemo_paragraphs_and_renamed_files(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    a, b = "10015567@N08_3655084291_d8b58466fa.mov", "49503055453@N01_5343566473_e1b71b3c0e.mp4"
    for split, videos in (("train", [a, b]), ("val", [b]), ("test", [a])):
        (anns / f"{split}_list.txt").write_text("\n".join(videos) + "\n")
        items = [{"video": a, "description": "the dog runs", "times": [[0, 0], [0, 1]], "annotation_id": 1},
                 {"video": b, "description": "a bird flies ", "times": [[2, 2]], "annotation_id": 2},
                 {"video": a, "description": "the dog stops", "times": [[3, 4]], "annotation_id": 3}]
        (anns / f"{split}_data.json").write_text(json.dumps(items))
    # a re-encoded copy keeps the stem but changes the extension
    make_videos(tmp_path / "videos", [a.replace(".mov", ".mp4"), b], clip_file)
    train = RetrievalSplit(cfg_for(tmp_path, "didemo"), "train")
    assert pairs(train) == [(a, "the dog runs the dog stops"), (b, "a bird flies")]
    ev = build_eval_dataset(cfg_for(tmp_path, "didemo"), "test")
    assert ev.video_ids == [a] and ev.captions == ["the dog runs the dog stops"] and ev.paragraph
    assert build_eval_dataset(cfg_for(tmp_path, "didemo"), "val").video_ids == [b]


# ----------------------------------------------------------------------------- VATEX
def test_vatex_multi_sentence_val_is_test(tmp_path, clip_file):
    anns = tmp_path / "anns"
    anns.mkdir()
    ids = ["Ptf_2VRj-V0_000122_000132", "--33Lscn6sk_000004_000014", "-0Cu4Qq3FxU_000034_000044"]
    (anns / "train_list.txt").write_text(ids[0] + "\n")
    (anns / "test_list.txt").write_text(ids[1] + "\n" + ids[2] + "\n")
    (anns / "ref_captions.json").write_text(json.dumps({
        ids[0]: ["A man slices bread.", "Bread is being cut."],
        ids[1]: ["A boy jumps.", "A kid jumps on a trampoline.", "Jumping outside."],
        ids[2]: ["Two dogs play."]}))
    make_videos(tmp_path / "videos", [f"{i}.mp4" for i in ids], clip_file)
    assert pairs(RetrievalSplit(cfg_for(tmp_path, "vatex"), "train")) == [
        (ids[0], "A man slices bread."), (ids[0], "Bread is being cut.")]
    ev = build_eval_dataset(cfg_for(tmp_path, "vatex"), "val")
    assert ev.split == "test" and ev.video_ids == ids[1:]
    assert ev.query_to_video.tolist() == [0, 0, 0, 1] and ev.multi_sentence


def test_registry_has_every_dataset_and_rejects_unknown(tmp_path):
    assert set(DATASETS) == {"msrvtt", "msvd", "lsmdc", "activity", "didemo", "vatex"}
    with pytest.raises(ValueError, match="unknown datatype 'youcook'.*msrvtt"):
        check_annotation_files(DataConfig(datatype="youcook", anno_path=str(tmp_path)))
    with pytest.raises(ValueError, match="split"):
        build_eval_dataset(DataConfig(anno_path=str(tmp_path)), "train")


# ----------------------------------------------------------------------------- bad input
def test_missing_annotation_files_fail_before_anything_else(tmp_path, clip_file):
    write_msrvtt(tmp_path, clip_file)
    os.remove(tmp_path / "anns" / "MSRVTT_JSFUSION_test.csv")
    cfg = cfg_for(tmp_path, "msrvtt")
    cfg.video_path = str(tmp_path / "no_such_videos")  # not looked at: annotations come first
    with pytest.raises(AnnotationFilesMissing) as info:
        check_annotation_files(cfg, splits=("train", "test"))
    msg = str(info.value)
    assert "MSRVTT_JSFUSION_test.csv" in msg and str(tmp_path / "anns") in msg
    with pytest.raises(AnnotationFilesMissing, match="MSRVTT_JSFUSION_test.csv"):
        build_eval_dataset(cfg, "test")
    # every dataset names all its expected files and says when the folder itself is missing
    for name in DATASETS:
        with pytest.raises(AnnotationFilesMissing) as info:
            check_annotation_files(DataConfig(datatype=name, anno_path=str(tmp_path / "nowhere")),
                                   splits=("train",))
        assert "does not exist" in str(info.value) and name in str(info.value)
    with pytest.raises(AnnotationFilesMissing, match="LSMDC16_annos_training.csv"):
        check_annotation_files(DataConfig(datatype="lsmdc", anno_path=str(tmp_path)), splits=("train",))


def test_missing_videos_error_or_dropped(tmp_path, clip_file, caplog):
    write_msrvtt(tmp_path, clip_file, videos=("video1",))
    with pytest.raises(FileNotFoundError) as info:
        build_train_dataset(cfg_for(tmp_path, "msrvtt"))
    msg = str(info.value)
    assert "2 of 3 videos" in msg and "video0, video2" in msg and str(tmp_path / "videos") in msg
    assert "drop_missing_videos" in msg
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.base"):
        train = RetrievalSplit(cfg_for(tmp_path, "msrvtt", drop_missing_videos=True), "train")
    assert pairs(train) == [("video1", "a dog runs")]
    assert "dropped 2 of 3 videos" in caplog.text and "4 captions" in caplog.text
    ev = build_eval_dataset(cfg_for(tmp_path, "msrvtt", drop_missing_videos=True), "test")
    assert ev.video_ids == ["video1"] and ev.query_to_video.tolist() == [0]


@pytest.fixture()
def one_bad_video(tmp_path, clip_file):
    """MSR-VTT layout where video2 is random bytes."""
    write_msrvtt(tmp_path, clip_file)
    bad = tmp_path / "videos" / "video2.mp4"
    os.remove(bad)
    bad.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)))
    return str(bad)


def test_train_decode_failure_replaces_sample_deterministically(tmp_path, one_bad_video, caplog):
    ds = build_train_dataset(cfg_for(tmp_path, "msrvtt"))
    bad_index = 3  # ("video2", "cars race")
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.base"):
        item = ds[bad_index]
    assert item["replaced"] is True and item["index"] != bad_index
    assert ds.data.video_ids[ds.data.caption_video[item["index"]]] != "video2"
    assert item["video_mask"].sum() == 4 and item["video"].abs().sum() > 0
    assert one_bad_video in caplog.text
    # the same index always gets the same stand-in, also in a fresh dataset (another worker)
    again = build_train_dataset(cfg_for(tmp_path, "msrvtt"))[bad_index]
    assert again["index"] == item["index"] and again["replaced"]
    torch.testing.assert_close(again["text_ids"], ds[item["index"]]["text_ids"])
    assert ds[0]["replaced"] is False


def test_train_fails_loudly_when_no_replacement_decodes(tmp_path, one_bad_video):
    ds = build_train_dataset(cfg_for(tmp_path, "msrvtt", max_replace_tries=3))
    for p in ds.data.video_paths:
        if p != one_bad_video:
            os.remove(p)
            with open(p, "wb") as f:
                f.write(b"garbage")
    with pytest.raises(VideoDecodeError, match="replacement samples failed"):
        ds[3]


def test_eval_decode_failure_raises_unless_allowed(tmp_path, one_bad_video, caplog):
    ev = build_eval_dataset(cfg_for(tmp_path, "msrvtt"), "test")
    ev.videos.data.video_paths[1] = one_bad_video  # the second test video is now unreadable
    with pytest.raises(VideoDecodeError) as info:
        ev.videos[1]
    assert one_bad_video in str(info.value)
    ok = build_eval_dataset(cfg_for(tmp_path, "msrvtt", allow_decode_errors=True), "test")
    ok.videos.data.video_paths[1] = one_bad_video
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.base"):
        item = ok.videos[1]
    assert item["failed"] is True and item["index"] == 1
    assert item["video_mask"].sum() == 0 and item["video"].abs().sum() == 0
    assert item["video"].shape == (MAX_FRAMES, 3, RES, RES)
    assert one_bad_video in caplog.text
    assert ok.videos[0]["failed"] is False


def test_config_validation_and_from_args():
    import argparse

    ns = argparse.Namespace(datatype="vatex", max_frames=8, lr=1e-4, frame_jitter=True)
    cfg = DataConfig.from_args(ns, input_resolution=64)
    assert (cfg.datatype, cfg.max_frames, cfg.frame_jitter, cfg.input_resolution) == ("vatex", 8, True, 64)
    for bad in (dict(slice_framepos=3), dict(max_frames=0), dict(train_list="8k"), dict(max_words=1)):
        with pytest.raises(ValueError):
            DataConfig(**bad)
