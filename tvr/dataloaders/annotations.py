"""Annotation readers: one small class per dataset, nothing else.

A reader knows which files a split needs (so they can all be checked before anything runs),
how to turn them into (video id, caption) pairs, and which file names a video id may have on
disk. Frame loading, tokenisation and error handling live in `base.py`, shared by all datasets.

File layouts follow the public CLIP4Clip / TS2-Net / DRL releases (see README "Datasets").
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from typing import Iterable

logger = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """Annotation files exist but their content is inconsistent (e.g. a listed video has no caption)."""


class AnnotationFilesMissing(FileNotFoundError):
    """Raised before any data is read when a split's annotation files are absent."""


@dataclass
class Annotations:
    """Captions of one split and the videos they describe.

    video_ids: unique video ids; their order is the video index used by evaluation.
    captions: one entry per pair (training) or per query (evaluation).
    caption_video: for each caption, the index of its video in video_ids.
    """
    video_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    caption_video: list[int] = field(default_factory=list)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "Annotations":
        """Group (video_id, caption) pairs; videos are numbered in order of first appearance."""
        ann = cls()
        index: dict[str, int] = {}
        for video_id, caption in pairs:
            if video_id not in index:
                index[video_id] = len(ann.video_ids)
                ann.video_ids.append(video_id)
            ann.captions.append(caption)
            ann.caption_video.append(index[video_id])
        return ann


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _require_captions(name: str, split: str, video_ids: list[str], captions: dict) -> None:
    missing = [v for v in video_ids if v not in captions]
    if missing:
        raise AnnotationError(
            f"{name} {split}: {len(missing)} listed video(s) have no caption, first: "
            f"{', '.join(missing[:5])}")


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

    def files(self, split: str) -> list[str]:
        if split == "train":
            return ["MSRVTT_data.json", f"MSRVTT_train.{self.train_list}.csv"]
        return ["MSRVTT_JSFUSION_test.csv"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        if split == "train":
            with open(self.path(f"MSRVTT_train.{self.train_list}.csv"), encoding="utf-8", newline="") as f:
                train_ids = [row["video_id"].strip() for row in csv.DictReader(f)]
            data = _read_json(self.path("MSRVTT_data.json"))
            by_video: dict[str, list[str]] = {v: [] for v in train_ids}
            for sent in data["sentences"]:
                if sent["video_id"] in by_video:
                    by_video[sent["video_id"]].append(sent["caption"])
            _require_captions(self.name, split, train_ids, {v: c for v, c in by_video.items() if c})
            return Annotations.from_pairs((v, c) for v in train_ids for c in by_video[v])
        with open(self.path("MSRVTT_JSFUSION_test.csv"), encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return Annotations.from_pairs((r["video_id"].strip(), r["sentence"]) for r in rows)


class MSVDReader(AnnotationReader):
    """MSVD: {split}_list.txt video ids + raw-captions.pkl ({video_id: [[token, ...], ...]});
    every caption is a pair / a query (multi-sentence evaluation)."""
    name = "msvd"
    multi_sentence = True

    def files(self, split: str) -> list[str]:
        return [f"{split}_list.txt", "raw-captions.pkl"]

    def read(self, split: str) -> Annotations:
        split = self.resolve_split(split)
        video_ids = _read_lines(self.path(f"{split}_list.txt"))
        with open(self.path("raw-captions.pkl"), "rb") as f:
            captions = pickle.load(f)  # the published annotation format is a pickle
        _require_captions(self.name, split, video_ids, captions)

        def text(cap) -> str:
            return cap if isinstance(cap, str) else " ".join(cap)

        return Annotations.from_pairs((v, text(c)) for v in video_ids for c in captions[v])


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
        pairs = []
        with open(self.path(self.FILES[split]), encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 6:
                    raise AnnotationError(f"{self.FILES[split]} line {line_no}: expected 6 tab-separated "
                                          f"fields, got {len(fields)}")
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
        ids_file, caps_file = self.files(split)
        video_ids = list(dict.fromkeys(_read_json(self.path(ids_file))))
        data = _read_json(self.path(caps_file))
        _require_captions(self.name, split, video_ids, data)
        return Annotations.from_pairs(
            (v, " ".join(s.strip() for s in data[v]["sentences"] if s.strip())) for v in video_ids)

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
        video_ids = list(dict.fromkeys(_read_lines(self.path(f"{split}_list.txt"))))
        descriptions: dict[str, list[str]] = {}
        for item in _read_json(self.path(f"{split}_data.json")):
            descriptions.setdefault(item["video"], []).append(item["description"].strip())
        _require_captions(self.name, split, video_ids, descriptions)
        return Annotations.from_pairs((v, " ".join(descriptions[v])) for v in video_ids)

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
        video_ids = _read_lines(self.path(f"{split}_list.txt"))
        captions = _read_json(self.path("ref_captions.json"))
        _require_captions(self.name, split, video_ids, captions)
        return Annotations.from_pairs((v, c) for v in video_ids for c in captions[v])


DATASETS: dict[str, type[AnnotationReader]] = {
    r.name: r for r in (MSRVTTReader, MSVDReader, LSMDCReader, ActivityNetReader, DiDeMoReader,
                        VATEXReader)
}
