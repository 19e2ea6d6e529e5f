"""Annotation readers: one small class per dataset, nothing else.

A reader knows which files a split needs (so they can all be checked before anything runs),
how to turn them into (video id, caption) pairs, and which file names a video id may have on
disk. Reading validates the content: a malformed file raises AnnotationError naming the file,
the line or key, and what was expected. `drop_degenerate` then removes empty captions and logs
repeats, once per split. Frame loading, tokenisation and error handling live in `base.py`,
shared by all datasets.

File layouts follow the public CLIP4Clip / TS2-Net / DRL releases (see README "Datasets").
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from tvr.utils.safe_pickle import UnsafePickleError, load_plain_pickle

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """Annotation files exist but their content is malformed or inconsistent (the message names the
    file, the line or key, and what was expected)."""


class AnnotationFilesMissing(FileNotFoundError):
    """Raised before any data is read when a split's annotation files are absent."""


@dataclass
class Annotations:
    """Captions of one split and the videos they describe.

    video_ids: unique video ids; their order is the video index used by evaluation.
    captions: one entry per pair (training) or per query (evaluation).
    caption_video: for each caption, the index of its video in video_ids.
    notes: oddities the reader tolerated (e.g. ids listed twice), logged once when a dataset is built.
    """
    video_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_video: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], notes: Iterable[str] = ()) -> "Annotations":
        """Group (video_id, caption) pairs; videos are numbered in order of first appearance."""
        ann = cls(notes=list(notes))
        index: dict[str, int] = {}
        for video_id, caption in pairs:
            if video_id not in index:
                index[video_id] = len(ann.video_ids)
                ann.video_ids.append(video_id)
            ann.captions.append(caption)
            ann.caption_video.append(index[video_id])
        return ann

    def pairs(self) -> list[tuple[str, str]]:
        return [(self.video_ids[v], c) for c, v in zip(self.captions, self.caption_video)]


def _first(items: Iterable, n: int = 5) -> str:
    return ", ".join(str(x) for x in list(items)[:n])


def drop_degenerate(ann: Annotations, label: str) -> Annotations:
    """Drop empty captions and log, once, what is odd about a split: the reader's notes, the
    dropped captions and videos, and (video, caption) pairs that occur more than once."""
    for note in ann.notes:
        logger.warning("%s: %s", label, note)
    pairs = ann.pairs()
    empty_ids = [v for v, c in pairs if not c.strip()]
    if empty_ids:
        kept = [(v, c) for v, c in pairs if c.strip()]
        lost_videos = len(ann.video_ids) - len({v for v, _ in kept})
        logger.warning("%s: dropped %d empty caption(s) (%d video(s) left without any caption), "
                       "first video ids: %s", label, len(empty_ids), lost_videos,
                       _first(dict.fromkeys(empty_ids)))
        pairs = kept
    counts = Counter(pairs)
    repeated = [p for p, n in counts.items() if n > 1]
    if repeated:
        logger.warning("%s: %d (video, caption) pair(s) occur more than once (%d extra copies, kept), "
                       "first video ids: %s", label, len(repeated), len(pairs) - len(counts),
                       _first(v for v, _ in repeated))
    return Annotations.from_pairs(pairs) if empty_ids else ann


# ----------------------------------------------------------------------------- parsing helpers
def _read_lines(path: str) -> list[str]:
    """Non-empty lines, stripped (one id per line)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}); expected one video id "
                              f"per line") from exc


def _read_json(path: str, expected: str):
    """json.load with errors that name the file, line and column, and the expected layout."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON "
                              f"({exc.msg}); expected {expected}") from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON: "
                              f"{expected}") from exc


def _read_csv(path: str, required: list[str], expected_header: str) -> list[tuple[int, dict]]:
    """(line number, row) of a comma-separated file whose header holds the `required` columns;
    every row must have exactly as many fields as the header."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise AnnotationError(
                    f"{path} line 1: header {','.join(header) or '(empty file)'} lacks column(s) "
                    f"{', '.join(missing)}; expected the header {expected_header}")
            reader.fieldnames = header
            rows = []
            for row in reader:
                extra = row.pop(None, None) or []
                present = sum(row[c] is not None for c in header)
                if extra or present < len(header):
                    raise AnnotationError(
                        f"{path} line {reader.line_num}: expected {len(header)} comma-separated "
                        f"fields ({','.join(header)}), got {present + len(extra)} (quote fields "
                        f"that contain commas)")
                rows.append((reader.line_num, row))
            return rows
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}); expected CSV with the "
                              f"header {expected_header}") from exc


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _expect(ok: bool, path: str, where: str, expected: str, got) -> None:
    if not ok:
        raise AnnotationError(f"{path} {where}: expected {expected}, got {_type_name(got)} "
                              f"{_preview(got)}")


def _preview(value) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect_str(value, path: str, where: str, what: str = "a string", nonempty: bool = False) -> str:
    _expect(isinstance(value, str) and (not nonempty or bool(value.strip())), path, where,
            "a non-empty string" if nonempty else what, value)
    return value


def _expect_str_list(value, path: str, where: str) -> list[str]:
    _expect(isinstance(value, list), path, where, "a list of strings", value)
    for j, item in enumerate(value):
        _expect_str(item, path, f"{where}[{j}]")
    return value


def _unique_ids(ids: list[str], path: str, notes: list[str]) -> list[str]:
    """Ids in first-appearance order; an id listed twice is kept once and noted."""
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        repeated = [v for v, n in Counter(ids).items() if n > 1]
        notes.append(f"{os.path.basename(path)} lists {len(repeated)} video id(s) more than once "
                     f"({len(ids) - len(unique)} extra line(s), each id kept once), first: "
                     f"{_first(repeated)}")
    return unique


def _require_captions(name: str, split: str, video_ids: list[str], captions: dict, list_file: str,
                      caption_file: str) -> None:
    missing = [v for v in video_ids if v not in captions]
    if missing:
        raise AnnotationError(
            f"{name} {split}: {len(missing)} video(s) listed in {list_file} have no caption in "
            f"{caption_file}, first: {_first(missing)}")


class AnnotationReader:
    """Base of the per-dataset readers.

    Subclasses set `name`, `multi_sentence` / `paragraph` (documentation for evaluation and the
    README), implement `files(split)` and `read(split)`, and may override `video_names`.
    Splits are "train", "val" and "test"; `eval_split` maps "val" to "test" for datasets
    without a validation set.
    """
    name = "base"
    has_val = True
    paragraph = False  # all captions of a video joined into one query
    multi_sentence = False  # several captions per test video, each its own query

    def __init__(self, anno_path: str, train_list: str = "9k"):
        self.anno_path = anno_path
        self.train_list = train_list

    def resolve_split(self, split: str) -> str:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if split == "val" and not self.has_val:
            return "test"
        return split

    def files(self, split: str) -> list[str]:
        raise NotImplementedError

    def read(self, split: str) -> Annotations:
        raise NotImplementedError

    def video_names(self, video_id: str) -> list[str]:
        """File names or stems under video_path that may hold this video, most likely first."""
        return [video_id]

    def path(self, filename: str) -> str:
        return os.path.join(self.anno_path, filename)

    def check_files(self, split: str) -> None:
        split = self.resolve_split(split)
        expected = self.files(split)
        missing = [f for f in expected if not os.path.isfile(self.path(f))]
        if missing:
            where = os.path.abspath(self.anno_path) if self.anno_path else "(anno_path not set)"
            folder_note = "" if os.path.isdir(self.anno_path or "") else " (the folder does not exist)"
            raise AnnotationFilesMissing(
                f"{self.name} {split}: missing annotation file(s) {', '.join(missing)} in "
                f"{where}{folder_note}. The {split} split expects: {', '.join(expected)}. "
                f"See README, section Datasets.")


class MSRVTTReader(AnnotationReader):
    """MSR-VTT: training captions from MSRVTT_data.json for the videos of MSRVTT_train.{9k,7k}.csv
    (one pair per caption); test = the 1k-A (JSFUSION) set, one sentence per video."""
    name = "msrvtt"
    has_val = False
    DATA_LAYOUT = '{"videos": [...], "sentences": [{"video_id": ..., "caption": ...}, ...]}'

    def files(self, split: str) -> list[str]:
        if split == "train":
            return ["MSRVTT_data.json", f"MSRVTT_train.{self.train_list}.csv"]
        return ["MSRVTT_JSFUSION_test.csv"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        notes: list[str] = []
        if split == "train":
            list_path = self.path(f"MSRVTT_train.{self.train_list}.csv")
            rows = _read_csv(list_path, ["video_id"], "video_id")
            train_ids = _unique_ids([_expect_str(r["video_id"], list_path, f"line {n} video_id", nonempty=True).strip()
                                     for n, r in rows], list_path, notes)
            data_path = self.path("MSRVTT_data.json")
            data = _read_json(data_path, self.DATA_LAYOUT)
            _expect(isinstance(data, dict) and "sentences" in data, data_path, "top level",
                    f"an object with a 'sentences' list: {self.DATA_LAYOUT}", data)
            sentences = data["sentences"]
            _expect(isinstance(sentences, list), data_path, "key 'sentences'", "a list", sentences)
            by_video: dict[str, list[str]] = {v: [] for v in train_ids}
            for i, sent in enumerate(sentences):
                where = f"sentences[{i}]"
                _expect(isinstance(sent, dict) and "video_id" in sent and "caption" in sent, data_path, where,
                        'an object with "video_id" and "caption"', sent)
                video_id = _expect_str(sent["video_id"], data_path, f"{where}.video_id")
                caption = _expect_str(sent["caption"], data_path, f"{where}.caption")
                if video_id in by_video:
                    by_video[video_id].append(caption)
            _require_captions(self.name, split, train_ids, {v: c for v, c in by_video.items() if c},
                              os.path.basename(list_path), "MSRVTT_data.json")
            return Annotations.from_pairs(((v, c) for v in train_ids for c in by_video[v]), notes)
        test_path = self.path("MSRVTT_JSFUSION_test.csv")
        rows = _read_csv(test_path, ["video_id", "sentence"], "key,vid_key,video_id,sentence")
        pairs = [(_expect_str(r["video_id"], test_path, f"line {n} video_id", nonempty=True).strip(), r["sentence"])
                 for n, r in rows]
        repeated = [v for v, k in Counter(v for v, _ in pairs).items() if k > 1]
        if repeated:
            notes.append(f"{len(repeated)} video(s) have more than one row in MSRVTT_JSFUSION_test.csv "
                         f"(each row is a query of its own), first: {_first(repeated)}")
        return Annotations.from_pairs(pairs, notes)


class MSVDReader(AnnotationReader):
    """MSVD: {split}_list.txt video ids + raw-captions.pkl ({video_id: [[token, ...], ...]});
    every caption is a pair / a query (multi-sentence evaluation)."""
    name = "msvd"
    multi_sentence = True
    LAYOUT = "a dict {video_id: [[token, ...], ...]}"

    def files(self, split: str) -> list[str]:
        return [f"{split}_list.txt", "raw-captions.pkl"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        notes: list[str] = []
        list_path = self.path(f"{split}_list.txt")
        video_ids = _unique_ids(_read_lines(list_path), list_path, notes)
        captions = self.read_captions()
        _require_captions(self.name, split, video_ids, captions, os.path.basename(list_path),
                          "raw-captions.pkl")
        return Annotations.from_pairs(((v, c) for v in video_ids for c in captions[v]), notes)

    def read_captions(self) -> dict[str, list[str]]:
        """raw-captions.pkl as {video_id: [caption, ...]}, read without running pickled code."""
        path = self.path("raw-captions.pkl")
        try:
            raw = load_plain_pickle(path)
        except UnsafePickleError:
            raise
        except pickle.UnpicklingError as exc:  # truncated or not a pickle
            raise AnnotationError(f"{exc}; expected {self.LAYOUT}") from exc
        _expect(isinstance(raw, dict), path, "top level", self.LAYOUT, raw)
        captions = {}
        for video_id, caps in raw.items():
            _expect_str(video_id, path, f"key {video_id!r}", "a video id string")
            _expect(isinstance(caps, list), path, f"key {video_id!r}", "a list of captions", caps)
            texts = []
            for j, cap in enumerate(caps):
                if isinstance(cap, str):  # tolerated: an already joined sentence
                    texts.append(cap)
                    continue
                _expect(isinstance(cap, (list, tuple)) and all(isinstance(t, str) for t in cap), path,
                        f"key {video_id!r} caption {j}", "a list of token strings", cap)
                texts.append(" ".join(cap))
            captions[video_id] = texts
        return captions


class LSMDCReader(AnnotationReader):
    """LSMDC: tab-separated rows clip_id, start_aligned, end_aligned, start_extracted,
    end_extracted, sentence (no header); one pair per row. Test = the 1,000-clip challenge set."""
    name = "lsmdc"
    FILES = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
             "test": "LSMDC16_challenge_1000_publictect.csv"}

    def files(self, split: str) -> list[str]:
        return [self.FILES[split]]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        path = self.path(self.FILES[split])
        pairs = []
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.readlines()
        except UnicodeDecodeError as exc:
            raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}); expected tab-separated "
                                  f"rows") from exc
        for line_no, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 6:
                raise AnnotationError(f"{path} line {line_no}: expected 6 tab-separated fields (clip_id, "
                                      f"start_aligned, end_aligned, start_extracted, end_extracted, "
                                      f"sentence), got {len(fields)}")
            if not fields[0].strip():
                raise AnnotationError(f"{path} line {line_no}: expected a clip id in the first field, "
                                      f"got an empty one")
            pairs.append((fields[0].strip(), "\t".join(fields[5:]).strip()))
        return Annotations.from_pairs(pairs)


class ActivityNetReader(AnnotationReader):
    """ActivityNet Captions, paragraph retrieval: {train,val}_ids.json (a list of "v_<id>") and
    train.json / val_1.json ({"v_<id>": {"duration", "timestamps", "sentences"}}); a video's
    sentences are joined into one paragraph. "test" is val_1 (the standard protocol)."""
    name = "activity"
    paragraph = True

    def resolve_split(self, split: str) -> str:
        split = super().resolve_split(split)
        return "val" if split == "test" else split

    def files(self, split: str) -> list[str]:
        if split == "train":
            return ["train_ids.json", "train.json"]
        return ["val_ids.json", "val_1.json"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        notes: list[str] = []
        ids_file, caps_file = self.files(split)
        ids_path, caps_path = self.path(ids_file), self.path(caps_file)
        ids = _read_json(ids_path, 'a list of video ids ["v_...", ...]')
        _expect(isinstance(ids, list), ids_path, "top level", 'a list of video ids ["v_...", ...]', ids)
        for i, v in enumerate(ids):
            _expect_str(v, ids_path, f"item {i}", nonempty=True)
        video_ids = _unique_ids(ids, ids_path, notes)
        layout = '{"v_<id>": {"duration": ..., "timestamps": [...], "sentences": [...]}, ...}'
        data = _read_json(caps_path, layout)
        _expect(isinstance(data, dict), caps_path, "top level", layout, data)
        for v, entry in data.items():
            _expect(isinstance(entry, dict) and "sentences" in entry, caps_path, f"key {v!r}",
                    'an object with a "sentences" list', entry)
            _expect_str_list(entry["sentences"], caps_path, f"key {v!r}.sentences")
        _require_captions(self.name, split, video_ids, data, ids_file, caps_file)
        return Annotations.from_pairs(
            ((v, " ".join(s.strip() for s in data[v]["sentences"] if s.strip())) for v in video_ids), notes)

    def video_names(self, video_id: str) -> list[str]:
        # Files are named either like the ids ("v_<id>.mp4") or without the prefix ("<id>.mp4").
        if video_id.startswith("v_"):
            return [video_id, video_id[2:]]
        return [video_id, "v_" + video_id]


class DiDeMoReader(AnnotationReader):
    """DiDeMo, paragraph retrieval: {split}_list.txt (video file names) and {split}_data.json
    (a list of {"video", "description", "times", ...}); a video's descriptions are joined in file
    order."""
    name = "didemo"
    paragraph = True

    def files(self, split: str) -> list[str]:
        return [f"{split}_list.txt", f"{split}_data.json"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        notes: list[str] = []
        list_path, data_path = (self.path(f) for f in self.files(split))
        video_ids = _unique_ids(_read_lines(list_path), list_path, notes)
        layout = '[{"video": ..., "description": ..., "times": [...]}, ...]'
        items = _read_json(data_path, layout)
        _expect(isinstance(items, list), data_path, "top level", layout, items)
        descriptions: dict[str, list[str]] = {}
        for i, item in enumerate(items):
            _expect(isinstance(item, dict) and "video" in item and "description" in item, data_path,
                    f"item {i}", 'an object with "video" and "description"', item)
            video = _expect_str(item["video"], data_path, f"item {i}.video", nonempty=True)
            text = _expect_str(item["description"], data_path, f"item {i}.description")
            descriptions.setdefault(video, []).append(text.strip())
        _require_captions(self.name, split, video_ids, descriptions, *self.files(split))
        return Annotations.from_pairs(((v, " ".join(d for d in descriptions[v] if d)) for v in video_ids),
                                      notes)

    def video_names(self, video_id: str) -> list[str]:
        # Ids are original file names ("...mov"); re-encoded copies keep the stem.
        stem, ext = os.path.splitext(video_id)
        return [video_id, stem] if ext else [video_id]


class VATEXReader(AnnotationReader):
    """VATEX: train_list.txt / test_list.txt and ref_captions.json ({video_id: [caption, ...]});
    every caption is a pair / a query (multi-sentence evaluation). No val split: val = test."""
    name = "vatex"
    has_val = False
    multi_sentence = True

    def files(self, split: str) -> list[str]:
        return [f"{split}_list.txt", "ref_captions.json"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        notes: list[str] = []
        list_path, caps_path = (self.path(f) for f in self.files(split))
        video_ids = _unique_ids(_read_lines(list_path), list_path, notes)
        layout = '{"<video_id>": ["caption", ...], ...}'
        captions = _read_json(caps_path, layout)
        _expect(isinstance(captions, dict), caps_path, "top level", layout, captions)
        for v, caps in captions.items():
            _expect_str_list(caps, caps_path, f"key {v!r}")
        _require_captions(self.name, split, video_ids, captions, *self.files(split))
        return Annotations.from_pairs(((v, c) for v in video_ids for c in captions[v]), notes)


DATASETS: dict[str, type[AnnotationReader]] = {
    r.name: r for r in (MSRVTTReader, MSVDReader, LSMDCReader, ActivityNetReader, DiDeMoReader,
                        VATEXReader)
}
