"""Data files cannot run code, malformed annotations fail at start-up naming file / line / key, and
degenerate inputs (empty captions, repeated ids and rows, over-long captions) are counted and logged."""
import copyreg
import json
import logging
import pickle
import random
import re

import pytest
import torch
from clip.simple_tokenizer import SimpleTokenizer as ReferenceTokenizer  # test-only reference

from tvr.dataloaders import AnnotationError, DataConfig, check_annotation_files
from tvr.dataloaders.base import RetrievalSplit, count_long_captions
from tvr.utils.safe_pickle import UnsafePickleError, load_plain_pickle

from .test_data_datasets import clip_file, make_videos, write_csv  # noqa: F401  (clip_file: fixture)


# ----------------------------------------------------------------------------- safe pickle
class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears only if pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_msvd_pickle_is_refused_and_runs_nothing(tmp_path):
    # The payload is live: plain pickle.load creates its marker.
    live_marker = tmp_path / "live_marker"
    pickle.loads(pickle.dumps({"vid": _Payload(live_marker)}))["vid"].close()
    assert live_marker.exists()

    anns = tmp_path / "anns"
    anns.mkdir()
    marker = tmp_path / "marker"
    for protocol in (0, 2, 5):  # GLOBAL (text) and STACK_GLOBAL (binary) opcodes
        with open(anns / "raw-captions.pkl", "wb") as f:
            pickle.dump({"vidA": [["a", "man"]], "vidB": _Payload(marker)}, f, protocol=protocol)
        (anns / "train_list.txt").write_text("vidA\n")
        cfg = DataConfig(datatype="msvd", anno_path=str(anns), video_path=str(tmp_path / "videos"))
        with pytest.raises(UnsafePickleError) as info:
            check_annotation_files(cfg, splits=("train",))
        # the payload's function pickles as io.open, or as _io.open on Python 3.12
        assert str(anns / "raw-captions.pkl") in str(info.value)
        assert re.search(r"refusing to load _?io\.open", str(info.value))
        assert not marker.exists()


def test_plain_unpickler_refuses_every_lookup_opcode(tmp_path):
    copyreg.add_extension("builtins", "open", 0xBEEF)
    try:
        cases = {
            "GLOBAL": b"cbuiltins\nopen\n.",
            "STACK_GLOBAL": b"\x80\x04\x8c\x08builtins\x8c\x04open\x93.",
            "INST": b"(ibuiltins\nopen\n.",
            "EXT2": b"\x80\x02\x83\xef\xbe.",
            "BINPERSID": b"\x80\x02K\x01Q.",
        }
        for name, data in cases.items():
            path = tmp_path / f"{name}.pkl"
            path.write_bytes(data)
            with pytest.raises(UnsafePickleError, match=f"{name}.pkl"):
                load_plain_pickle(path)
    finally:
        copyreg.remove_extension("builtins", "open", 0xBEEF)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"vid": [["a"]]})[:-3])
    with pytest.raises(pickle.UnpicklingError, match="truncated.pkl: not a readable pickle"):
        load_plain_pickle(truncated)


def test_plain_unpickler_reads_the_published_layout(tmp_path):
    captions = {"vidA_1_5": [["a", "man", "rides"], ["ünïcode", "tokens"]], "vidB": [("x", "y")],
                "n": [[]], "misc": [{"k": (1, 2.5, None, True)}]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(captions, protocol=protocol))
        assert load_plain_pickle(path) == captions
    # Python 2 wrote byte strings (SHORT_BINSTRING): they come back as text
    py2 = tmp_path / "py2.pkl"
    py2.write_bytes(b"\x80\x02}U\x03vid]](U\x01aU\x03manea" + b"s.")
    assert load_plain_pickle(py2) == {"vid": [["a", "man"]]}


# ----------------------------------------------------------------------------- annotation validation
GOOD = {
    "msrvtt": {
        "MSRVTT_data.json": json.dumps({"videos": [], "sentences": [
            {"video_id": "video0", "caption": "a man sings", "sen_id": 0},
            {"video_id": "video1", "caption": "a dog runs", "sen_id": 1}]}),
        "MSRVTT_train.9k.csv": "video_id\nvideo0\nvideo1\n",
        "MSRVTT_JSFUSION_test.csv": "key,vid_key,video_id,sentence\nret0,msr2,video2,a cat sleeps\n"
                                    "ret1,msr3,video3,\"a bird, flying\"\n",
    },
    "msvd": {
        "train_list.txt": "vidA\n", "test_list.txt": "vidB\n",
        "raw-captions.pkl": pickle.dumps({"vidA": [["a", "man"]], "vidB": [["a", "dog"], ["dog"]]}),
    },
    "lsmdc": {
        "LSMDC16_annos_training.csv": "clip0\t0\t1\t0\t1\tSomeone opens a door.\n",
        "LSMDC16_challenge_1000_publictect.csv": "clip1\t0\t1\t0\t1\tShe smiles.\n",
    },
    "activity": {
        "train_ids.json": json.dumps(["v_a"]), "val_ids.json": json.dumps(["v_b"]),
        "train.json": json.dumps({"v_a": {"duration": 2.0, "timestamps": [[0, 1]], "sentences": ["One."]}}),
        "val_1.json": json.dumps({"v_b": {"duration": 2.0, "timestamps": [[0, 1]], "sentences": ["Two."]}}),
    },
    "didemo": {
        "train_list.txt": "a.mp4\n", "test_list.txt": "b.mp4\n",
        "train_data.json": json.dumps([{"video": "a.mp4", "description": "dog runs", "times": [[0, 1]]}]),
        "test_data.json": json.dumps([{"video": "b.mp4", "description": "cat sits", "times": [[0, 1]]}]),
    },
    "vatex": {
        "train_list.txt": "id0\n", "test_list.txt": "id1\n",
        "ref_captions.json": json.dumps({"id0": ["A boy jumps."], "id1": ["Two dogs play.", "Dogs."]}),
    },
}

# (datatype, file, bad content, split, fragments the message must contain after the file's path)
MALFORMED = [
    ("msrvtt", "MSRVTT_data.json", '{"sentences": [\n  {"video_id": "video0",}\n]}', "train",
     ["line 2 column", "invalid JSON", '"sentences"']),
    ("msrvtt", "MSRVTT_data.json", json.dumps({"videos": []}), "train",
     ["top level: expected an object with a 'sentences' list"]),
    ("msrvtt", "MSRVTT_data.json", json.dumps({"sentences": [{"video_id": "video0", "caption": "ok"},
                                                            {"video_id": "video1"}]}), "train",
     ["sentences[1]: expected an object with \"video_id\" and \"caption\""]),
    ("msrvtt", "MSRVTT_data.json", json.dumps({"sentences": [{"video_id": "video0", "caption": 7}]}), "train",
     ["sentences[0].caption: expected a string, got int 7"]),
    ("msrvtt", "MSRVTT_train.9k.csv", "vid\nvideo0\n", "train",
     ["line 1: header vid lacks column(s) video_id"]),
    ("msrvtt", "MSRVTT_train.9k.csv", "video_id\nvideo0\n \n", "train",
     ["line 3 video_id: expected a non-empty string"]),
    ("msrvtt", "MSRVTT_JSFUSION_test.csv", "key,vid_key,video,sentence\nret0,msr2,video2,a cat\n", "test",
     ["line 1: header key,vid_key,video,sentence lacks column(s) video_id",
      "expected the header key,vid_key,video_id,sentence"]),
    ("msrvtt", "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr2,video2,a cat\nret1,msr3\n",
     "test", ["line 3: expected 4 comma-separated fields", "got 2"]),
    ("msrvtt", "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\nret0,msr2,video2,a cat, sleeping\n",
     "test", ["line 2: expected 4 comma-separated fields", "got 5", "quote"]),
    ("msvd", "raw-captions.pkl", pickle.dumps([["a", "man"]]), "train",
     ["top level: expected a dict {video_id: [[token, ...], ...]}, got list"]),
    ("msvd", "raw-captions.pkl", pickle.dumps({"vidA": [["a", "man"], [1, 2]]}), "train",
     ["key 'vidA' caption 1: expected a list of token strings, got list [1, 2]"]),
    ("msvd", "raw-captions.pkl", pickle.dumps({"vidA": "a man"}), "train",
     ["key 'vidA': expected a list of captions, got str"]),
    ("msvd", "raw-captions.pkl", pickle.dumps({"vidA": [["a"]]})[:-2], "train", ["not a readable pickle"]),
    ("msvd", "raw-captions.pkl", pickle.dumps({"vidZ": [["a"]]}), "train",
     ["1 video(s) listed in train_list.txt have no caption in raw-captions.pkl, first: vidA"]),
    ("msvd", "train_list.txt", "vid\xe9A\n".encode("latin-1"), "train", ["not UTF-8 text (byte 3)"]),
    ("lsmdc", "LSMDC16_annos_training.csv", "clip0\t0\t1\t0\t1\tok\nclip1\t0\t1\tshort\n", "train",
     ["line 2: expected 6 tab-separated fields", "got 4"]),
    ("lsmdc", "LSMDC16_challenge_1000_publictect.csv", "\t0\t1\t0\t1\tno id\n", "test",
     ["line 1: expected a clip id in the first field"]),
    ("activity", "train_ids.json", json.dumps({"v_a": 1}), "train", ["top level: expected a list of video ids"]),
    ("activity", "train_ids.json", json.dumps(["v_a", 5]), "train", ["item 1: expected a non-empty string, got int"]),
    ("activity", "val_1.json", json.dumps({"v_b": {"duration": 2.0}}), "test",
     ["key 'v_b': expected an object with a \"sentences\" list"]),
    ("activity", "train.json", json.dumps({"v_a": {"sentences": ["One.", None]}}), "train",
     ["key 'v_a'.sentences[1]: expected a string, got null"]),
    ("activity", "train.json", '{"v_a": {"sentences": ["One."]}', "train", ["line 1 column", "invalid JSON"]),
    ("didemo", "train_data.json", json.dumps({"video": "a.mp4"}), "train", ["top level: expected [{\"video\""]),
    ("didemo", "test_data.json", json.dumps([{"video": "b.mp4", "description": "x"}, {"video": "b.mp4"}]), "test",
     ["item 1: expected an object with \"video\" and \"description\""]),
    ("vatex", "ref_captions.json", json.dumps({"id0": "A boy jumps.", "id1": ["x"]}), "train",
     ["key 'id0': expected a list of strings, got str"]),
    ("vatex", "ref_captions.json", json.dumps(["id0"]), "test", ["top level: expected {\"<video_id>\""]),
]


def write_annotations(anns, files):
    anns.mkdir(exist_ok=True)
    for name, content in files.items():
        (anns / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


@pytest.mark.parametrize("datatype", sorted(GOOD))
def test_valid_annotations_pass_the_start_up_check(tmp_path, datatype):
    write_annotations(tmp_path / "anns", GOOD[datatype])
    cfg = DataConfig(datatype=datatype, anno_path=str(tmp_path / "anns"), video_path="/nonexistent")
    parsed = check_annotation_files(cfg, splits=("train", "test"))
    assert set(parsed) == {"train", "test"} and all(a.captions for a in parsed.values())


@pytest.mark.parametrize("datatype,filename,content,split,fragments", MALFORMED,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(MALFORMED)])
def test_malformed_annotation_names_file_line_and_expectation(tmp_path, datatype, filename, content, split,
                                                               fragments):
    anns = tmp_path / "anns"
    write_annotations(anns, dict(GOOD[datatype], **{filename: content}))
    # video_path is never looked at: the check runs before anything else
    cfg = DataConfig(datatype=datatype, anno_path=str(anns), video_path="/nonexistent")
    with pytest.raises(AnnotationError) as info:
        check_annotation_files(cfg, splits=(split,))
    message = str(info.value)
    assert filename in message
    for fragment in fragments:
        assert fragment in message, message


# ----------------------------------------------------------------------------- degenerate inputs
def write_msrvtt(tmp_path, clip_file, sentences, train_csv, test_rows):
    anns = tmp_path / "anns"
    anns.mkdir()
    (anns / "MSRVTT_data.json").write_text(json.dumps(
        {"videos": [], "sentences": [{"video_id": v, "caption": c} for v, c in sentences]}))
    (anns / "MSRVTT_train.9k.csv").write_text(train_csv)
    write_csv(anns / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], test_rows)
    make_videos(tmp_path / "videos", [f"video{i}.mp4" for i in range(5)], clip_file)
    return DataConfig(datatype="msrvtt", anno_path=str(anns), video_path=str(tmp_path / "videos"), max_words=8)


def split_pairs(data):
    return [(data.video_ids[v], c) for c, v in zip(data.captions, data.caption_video)]


def test_empty_captions_dropped_and_repeats_reported(tmp_path, clip_file, caplog):
    cfg = write_msrvtt(
        tmp_path, clip_file,
        sentences=[("video0", "a man sings"), ("video0", ""), ("video1", "   "), ("video2", "cars race"),
                   ("video2", "cars race")],
        train_csv="video_id\nvideo0\nvideo1\nvideo2\nvideo0\n",
        test_rows=[["r0", "m", "video3", "a cat"], ["r1", "m", "video4", "\t"], ["r2", "m", "video3", "a cat"]])
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.annotations"):
        train = RetrievalSplit(cfg, "train")
    # video0 listed twice is read once; its empty caption and video1's blank one are gone
    assert split_pairs(train) == [("video0", "a man sings"), ("video2", "cars race"), ("video2", "cars race")]
    log = caplog.text
    assert "MSRVTT_train.9k.csv lists 1 video id(s) more than once" in log and "first: video0" in log
    assert "dropped 2 empty caption(s) (1 video(s) left without any caption), first video ids: video0, video1" in log
    assert "1 (video, caption) pair(s) occur more than once (1 extra copies, kept), first video ids: video2" in log
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tvr.dataloaders.annotations"):
        test = RetrievalSplit(cfg, "test")
    assert split_pairs(test) == [("video3", "a cat"), ("video3", "a cat")]  # video4's blank query dropped
    assert "1 video(s) have more than one row in MSRVTT_JSFUSION_test.csv" in caplog.text
    assert "dropped 1 empty caption(s) (1 video(s) left without any caption), first video ids: video4" in caplog.text
    # the start-up check parses without logging these (they are logged once, when the dataset is built)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_annotation_files(cfg, splits=("train", "test"))
    assert caplog.text == ""


def test_only_empty_captions_is_an_error(tmp_path, clip_file):
    cfg = write_msrvtt(tmp_path, clip_file, sentences=[("video0", " ")], train_csv="video_id\nvideo0\n",
                       test_rows=[["r0", "m", "video3", "a cat"]])
    with pytest.raises(ValueError, match="no \\(non-empty\\) captions"):
        RetrievalSplit(cfg, "train")


def test_truncated_captions_counted_once_per_split(tmp_path, clip_file, caplog):
    # max_words 8 leaves 6 text tokens; "dog" is one token, so n words = n tokens
    cfg = write_msrvtt(tmp_path, clip_file,
                       sentences=[("video0", "dog " * 6), ("video0", "dog " * 7), ("video1", "dog " * 30),
                                  ("video1", "dog")],
                       train_csv="video_id\nvideo0\nvideo1\n", test_rows=[["r0", "m", "video3", "a cat"]])
    with caplog.at_level(logging.INFO, logger="tvr.dataloaders.base"):
        RetrievalSplit(cfg, "train")
    assert "msrvtt train: 2 of 4 captions are longer than max_words (8 tokens) and are truncated" in caplog.text
    # another tokenizer (one token per word + end token: 7 words fit) counts exactly on small splits ...
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tvr.dataloaders.base"):
        RetrievalSplit(cfg, "train", tokenizer=_WordTokenizer())
    assert "msrvtt train: 1 of 4 captions are longer than max_words" in caplog.text


def test_truncated_captions_estimated_from_a_sample_for_other_tokenizers(tmp_path, clip_file, caplog):
    # one token per word + end token, max_words 8: captions of more than 7 words are cut (the 1st and 6th)
    cfg = write_msrvtt(tmp_path, clip_file, sentences=[("video0", "w " * 10)] + [("video0", "w")] * 4 +
                       [("video1", "w " * 10)], train_csv="video_id\nvideo0\nvideo1\n",
                       test_rows=[["r0", "m", "video3", "a cat"]])
    data = RetrievalSplit(cfg, "train", tokenizer=_WordTokenizer())
    with caplog.at_level(logging.INFO, logger="tvr.dataloaders.base"):
        data._log_truncated_captions(sample_size=2)  # evenly spaced: the first and the last caption
    assert "msrvtt train: about 6 of 6 captions are longer than max_words (8 tokens) and are truncated " \
           "(2 of 2 sampled captions)" in caplog.text


def test_count_long_captions_matches_the_reference_tokenizer():
    """The word-by-word shortcut gives the exact count OpenAI's tokenizer gives caption by caption."""
    ref = ReferenceTokenizer()
    rng = random.Random(0)
    words = ("a man is singing on-stage while the CROWD cheers it's don't they'll 12 345 a.b.c ... !!! "
             "<|endoftext|> foo_bar x@y.com #tag $5 (hi) [x] {y} ~`^ '' \"q\" re-enter <x> café naïve "
             "&amp; &lt;b&gt; straße 東京 🙂").split()
    captions = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 25))) for _ in range(400)]
    # control characters: the tokenizer's cleaning deletes them, so they join the letters around them
    captions += ["\tspaced\n out  caption\r\n", "", "   ", "\x0bvertical tab", "control\x01char",
                 "a\x1cb " * 6, "c\x0bd e\x7ff " * 3]
    for max_words in (5, 12, 22):  # start and end tokens take two places
        expected = sum(len(ref.encode(c)) > max_words - 2 for c in captions)
        assert count_long_captions(captions, max_words) == expected
    text_tokenizers = pytest.importorskip("tvr.models.text_tokenizers")
    assert count_long_captions(captions, 12, text_tokenizers.CLIPTextTokenizer()) == \
        sum(len(ref.encode(c)) > 10 for c in captions)


class _WordTokenizer:
    """Another tokenizer face: one token per word, then an end token (no start token)."""

    def tokenize(self, texts, max_words):
        rows = [[1] * min(len(t.split()), max_words - 1) + [2] for t in texts]
        mask = torch.zeros(len(texts), max_words, dtype=torch.long)
        for i, row in enumerate(rows):
            mask[i, :len(row)] = 1
        return mask.clone(), mask


def test_count_long_captions_with_another_tokenizer():
    captions = ["one two three", "one two three four", "a b c d e f g", ""]
    # max_words 4 leaves 3 words beside the end token: the 4- and 7-word captions are cut
    assert count_long_captions(captions, 4, _WordTokenizer()) == 2
    assert count_long_captions(captions, 8, _WordTokenizer()) == 0
