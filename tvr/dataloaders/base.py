"""The one dataset implementation shared by every dataset.

`RetrievalSplit` takes an annotation reader (the per-dataset hook from `annotations.py`),
checks the annotation files, resolves every video to a file once at start-up (missing videos
are an error, or dropped with `drop_missing_videos`), and owns the single frame loader
(`load_video`) and caption tokenizer (`caption_text`). The torch Datasets below are thin views:

- `TrainDataset`: one item per (caption, video) pair. A video that fails to decode is replaced
  by another pair chosen deterministically from the index, with a warning naming the file and
  `replaced=True` in the item, so the training loop can count replacements per epoch (a counter
  inside DataLoader worker processes would be lost).
- `EvalTexts` / `EvalVideos`: queries and videos of an evaluation split, bundled in `EvalData`
  with `query_to_video` (multi-sentence datasets have several queries per video).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset

from .annotations import DATASETS, AnnotationReader, Annotations, drop_degenerate
from .config import DataConfig
from .transforms import build_frame_transform, frames_to_tensor
from .video_reader import VideoDecodeError, read_frames, sample_frame_indices

logger = logging.getLogger(__name__)


def get_reader(cfg: DataConfig) -> AnnotationReader:
    if cfg.datatype not in DATASETS:
        raise ValueError(f"unknown datatype {cfg.datatype!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.datatype](cfg.anno_path, train_list=cfg.train_list)


def check_annotation_files(cfg: DataConfig, splits=("train", "test")) -> dict[str, Annotations]:
    """Fail fast, before any model is built, when annotation files of `splits` are missing or
    malformed: every file is parsed and validated (AnnotationError names the file, the line or key,
    and what was expected). Returns the parsed annotations by split, for logging or inspection."""
    reader = get_reader(cfg)
    for split in splits:  # all files present before any is parsed
        reader.check_files(split)
    by_file_split: dict[str, Annotations] = {}  # "val" may read the test files: parse them once
    for split in splits:
        resolved = reader.resolve_split(split)
        if resolved not in by_file_split:
            ann = by_file_split[resolved] = reader.read(resolved)
            logger.info("%s %s annotations: %d captions, %d videos", cfg.datatype, resolved, len(ann.captions),
                        len(ann.video_ids))
    return {split: by_file_split[reader.resolve_split(split)] for split in splits}


def index_video_files(root: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """Map file name and stem -> path for every video file under root (walked recursively).

    Names are matched case-sensitively; when two files share a stem the extension listed first
    in `extensions` wins, then the lexicographically first path (the walk is sorted, so the
    result does not depend on the file system's listing order).
    """
    rank = {ext: i for i, ext in enumerate(extensions)}
    by_name: dict[str, str] = {}
    by_stem: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fname in sorted(filenames):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in rank:
                continue
            path = os.path.join(dirpath, fname)
            by_name.setdefault(fname, path)
            key = (rank[ext.lower()], path)
            if stem not in by_stem or key < by_stem[stem]:
                by_stem[stem] = key
    index = {stem: path for stem, (_, path) in by_stem.items()}
    index.update(by_name)  # an exact file name beats a stem
    return index


# Printable ASCII without "&", plus tab / newline / carriage return: CLIP's text cleaning leaves such
# text unchanged apart from case and whitespace (no HTML entities, nothing for ftfy to repair).
_PLAIN_TEXT = re.compile(r"[\t\n\r -%'-~]*")


def _is_plain_text(text: str) -> bool:
    # isascii / isprintable are fast C checks; the regular expression only runs on text with tabs or newlines.
    return text.isascii() and "&" not in text and (text.isprintable() or bool(_PLAIN_TEXT.fullmatch(text)))


def count_long_captions(captions: list[str], max_words: int, tokenizer=None) -> int:
    """How many captions do not fit in `max_words` tokens (start / end tokens included) and are cut.

    Cheap on CLIP's BPE (the default): it never merges across spaces, so a plain-ASCII caption's
    length is the sum of its words' lengths, and the distinct words are encoded in one call. Other
    tokenizers (anything with ``tokenize(texts, max_words) -> (ids, mask)``) tokenize every caption
    one token wider and count the rows that fill it.
    """
    bpe = _clip_bpe(tokenizer)
    if bpe is None:
        long = 0
        for start in range(0, len(captions), 4096):
            _, mask = tokenizer.tokenize(list(captions[start:start + 4096]), max_words + 1)
            long += int((mask.sum(dim=1) > max_words).sum())
        return long
    limit = max_words - 2  # CLIP's BPE: start and end tokens around the text
    split = [caption.lower().split() if _is_plain_text(caption) else None for caption in captions]
    tokens_of = _word_token_counts(set().union(*(w for w in split if w)), bpe).__getitem__
    long = 0
    for caption, words in zip(captions, split):
        n = sum(map(tokens_of, words)) if words is not None else len(bpe.encode(caption))
        long += n > limit
    return long


def _clip_bpe(tokenizer):
    """tokenization_clip's SimpleTokenizer behind `tokenizer`, or None for another tokenizer."""
    from tvr.models.tokenization_clip import SimpleTokenizer, default_tokenizer

    if tokenizer is None:
        return default_tokenizer()
    if isinstance(tokenizer, SimpleTokenizer):
        return tokenizer
    try:  # the backbone-facing wrapper of the same BPE
        from tvr.models.text_tokenizers import CLIPTextTokenizer
    except ImportError:
        return None
    return default_tokenizer() if isinstance(tokenizer, CLIPTextTokenizer) else None


def _word_token_counts(words: set[str], tok) -> dict[str, int]:
    """Tokens per word. One encode call over all words joined by end-of-text markers: calling it per
    word would spend most of the time in the per-call text cleaning."""
    from tvr.models.tokenization_clip import EOT_TEXT

    batch = sorted(w for w in words if "<" not in w)  # a word holding a marker would break the split
    counts = {w: len(tok.encode(w)) for w in words if "<" in w}
    ids = tok.encode(f" {EOT_TEXT} ".join(batch)) if batch else []
    lengths, n = [], 0
    for i in ids:
        if i == tok.eot_token_id:
            lengths.append(n)
            n = 0
        else:
            n += 1
    lengths.append(n)
    if len(lengths) != len(batch):  # not expected; stay exact rather than fast
        return {w: len(tok.encode(w)) for w in words}
    counts.update(zip(batch, lengths))
    return counts


class RetrievalSplit:
    """Annotations of one split resolved to video files, plus the shared frame/text loaders."""

    def __init__(self, cfg: DataConfig, split: str, tokenizer=None):
        self.cfg = cfg
        self.reader = get_reader(cfg)
        self.split = self.reader.resolve_split(split)
        self.reader.check_files(self.split)
        if not os.path.isdir(cfg.video_path or ""):
            raise FileNotFoundError(f"video_path {cfg.video_path!r} is not a folder")
        ann = drop_degenerate(self.reader.read(self.split), f"{cfg.datatype} {self.split}")
        if not ann.captions:
            raise ValueError(f"{cfg.datatype} {self.split}: the annotation files list no (non-empty) captions")
        self.video_ids, self.video_paths, self.captions, self.caption_video = self._resolve(ann)
        self.tokenizer = tokenizer
        self.transform = build_frame_transform(cfg.input_resolution, mean=cfg.image_mean, std=cfg.image_std,
                                               interpolation=cfg.interpolation, resize_mode=cfg.resize_mode)
        logger.info("%s %s: %d captions, %d videos", cfg.datatype, self.split, len(self.captions),
                    len(self.video_ids))
        self._log_truncated_captions()
        self.frame_cache = None
        self.caption_tokens = None  # (ids, mask), N x max_words each: every caption, tokenized up front
        if cfg.cache_frames:  # decode every video (frame_cache.py) and tokenize every caption once now, not every epoch
            from .frame_cache import build_frame_cache

            self.frame_cache = build_frame_cache(self, jitter=cfg.frame_jitter and self.split == "train")
            ids, mask = self.tokenize(self.captions)
            self.caption_tokens = (ids.int(), mask.bool())  # 5 bytes a position instead of 16

    # ----------------------------------------------------------------- start-up checks
    def _resolve(self, ann: Annotations):
        index = index_video_files(self.cfg.video_path, self.cfg.video_extensions)
        paths: list[str | None] = []
        for vid in ann.video_ids:
            paths.append(next((index[n] for n in self.reader.video_names(vid) if n in index), None))
        missing = [vid for vid, p in zip(ann.video_ids, paths) if p is None]
        if not missing:
            return ann.video_ids, paths, ann.captions, ann.caption_video
        where = os.path.abspath(self.cfg.video_path)
        if not self.cfg.drop_missing_videos:
            raise FileNotFoundError(
                f"{self.cfg.datatype} {self.split}: {len(missing)} of {len(ann.video_ids)} videos not "
                f"found under {where}, first: {', '.join(missing[:5])}. Fix video_path, or pass "
                f"--drop_missing_videos to skip their captions.")
        keep = [p is not None for p in paths]
        new_index = np.cumsum(keep) - 1
        video_ids = [v for v, k in zip(ann.video_ids, keep) if k]
        video_paths = [p for p in paths if p is not None]
        captions, caption_video = [], []
        for cap, v in zip(ann.captions, ann.caption_video):
            if keep[v]:
                captions.append(cap)
                caption_video.append(int(new_index[v]))
        logger.warning("%s %s: dropped %d of %d videos missing under %s (%d captions), first: %s",
                       self.cfg.datatype, self.split, len(missing), len(ann.video_ids), where,
                       len(ann.captions) - len(captions), ", ".join(missing[:5]))
        if not video_ids:
            raise FileNotFoundError(f"{self.cfg.datatype} {self.split}: no video found under {where}")
        return video_ids, video_paths, captions, caption_video

    def _log_truncated_captions(self, sample_size: int = 5000) -> None:
        """Log how many captions max_words cuts. Exact for CLIP's BPE (fast); other tokenizers
        encode caption by caption, so large splits are estimated from an evenly spaced sample."""
        n = len(self.captions)
        label = f"{self.cfg.datatype} {self.split}"
        if _clip_bpe(self.tokenizer) is not None or n <= sample_size:
            long = count_long_captions(self.captions, self.cfg.max_words, self.tokenizer)
            if long:
                logger.info("%s: %d of %d captions are longer than max_words (%d tokens) and are truncated",
                            label, long, n, self.cfg.max_words)
            return
        sample = [self.captions[i] for i in np.linspace(0, n - 1, sample_size).round().astype(int)]
        long = count_long_captions(sample, self.cfg.max_words, self.tokenizer)
        if long:
            logger.info("%s: about %d of %d captions are longer than max_words (%d tokens) and are truncated "
                        "(%d of %d sampled captions)", label, round(long * n / sample_size), n,
                        self.cfg.max_words, long, sample_size)

    # ----------------------------------------------------------------- loaders
    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (ids, mask), LongTensor[N, max_words] each. The tokenizer is the backbone's (anything
        with ``tokenize(texts, max_words)``, e.g. ``encoder.tokenizer``); by default CLIP's BPE."""
        if hasattr(self.tokenizer, "tokenize"):
            ids, mask = self.tokenizer.tokenize(captions, self.cfg.max_words)
        else:  # None or a tokenization_clip.SimpleTokenizer
            from tvr.models.tokenization_clip import tokenize  # lazy: the model package is heavier

            ids, mask = tokenize(captions, self.cfg.max_words, tokenizer=self.tokenizer)
        return ids.long(), mask.long()

    def caption_text(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption ``index`` as (ids, mask), LongTensor[max_words] each: read from the tokens made up front
        with ``cache_frames`` (BPE with text clean-up costs about 0.1 ms a caption), else tokenized now."""
        if self.caption_tokens is not None:
            ids, mask = self.caption_tokens
            return ids[index].long(), mask[index].long()  # copies: an item never aliases the table
        ids, mask = self.tokenize([self.captions[index]])
        return ids[0], mask[0]

    def decode_frames(self, video_index: int, index_fn) -> torch.Tensor:
        """Decode the frames index_fn picks, resized and cropped: uint8 T x 3 x R x R."""
        cfg = self.cfg
        decode_size = self.transform.resize_size if cfg.decode_resize else None
        decoded = read_frames(self.video_paths[video_index], index_fn, num_threads=cfg.decode_threads,
                              decode_size=decode_size)
        return self.transform.resize_crop(frames_to_tensor(decoded.frames))

    def load_video(self, video_index: int, jitter: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, sample and transform one video.

        Returns video FloatTensor[max_frames, 3, R, R] (zero after the real frames) and
        video_mask LongTensor[max_frames] (1 = real frame). Raises VideoDecodeError.
        """
        cfg = self.cfg
        path = self.video_paths[video_index]
        # Jitter comes from torch's global RNG: seeded per DataLoader worker and different each
        # epoch, reproducible under a fixed seed. Drawn before decoding so a backend retry reuses it.
        u = torch.rand(cfg.max_frames, dtype=torch.float64).numpy() if jitter else None
        index_fn = partial(_indices, video_framerate=cfg.video_framerate, max_frames=cfg.max_frames,
                           slice_framepos=cfg.slice_framepos, jitter=u)
        if self.frame_cache is not None:
            frames = self.frame_cache.get(video_index, index_fn, path)
        else:
            frames = self.decode_frames(video_index, index_fn)
        frames = self.transform.normalize(frames)  # uint8 -> float32 T x 3 x R x R
        t = frames.shape[0]
        mask = torch.zeros(cfg.max_frames, dtype=torch.long)
        mask[:t] = 1
        if t == cfg.max_frames:
            return frames.contiguous(), mask
        video = frames.new_zeros((cfg.max_frames,) + tuple(frames.shape[1:]))
        video[:t] = frames
        return video, mask


def _indices(num_frames, fps, *, video_framerate, max_frames, slice_framepos, jitter):
    # Module-level (not a lambda) so the partial pickles into DataLoader worker processes.
    return sample_frame_indices(num_frames, fps, video_framerate, max_frames, slice_framepos, jitter)


class TrainDataset(Dataset):
    """Training pairs: item i is caption i with its video.

    Item keys: text_ids, text_mask (LongTensor[max_words]); video (FloatTensor[max_frames,3,R,R]);
    video_mask (LongTensor[max_frames]); index (int: the pair actually returned); replaced (bool).
    """

    def __init__(self, data: RetrievalSplit):
        self.data = data
        self._bad_paths: set[str] = set()  # per process; only used to warn once per file

    def __len__(self) -> int:
        return len(self.data.captions)

    def replacement_index(self, index: int, attempt: int) -> int:
        """Deterministic stand-in for sample `index` on retry `attempt` (>= 1)."""
        n = len(self)
        if n == 1:
            return 0
        j = int(np.random.default_rng([index, attempt]).integers(n - 1))
        return j if j < index else j + 1  # never the failing index itself

    def __getitem__(self, index: int) -> dict:
        data = self.data
        tried = []
        for attempt in range(data.cfg.max_replace_tries + 1):
            i = index if attempt == 0 else self.replacement_index(index, attempt)
            v = data.caption_video[i]
            try:
                video, video_mask = data.load_video(v, jitter=data.cfg.frame_jitter)
            except VideoDecodeError as exc:
                tried.append(exc.path)
                if exc.path not in self._bad_paths:
                    self._bad_paths.add(exc.path)
                    logger.warning("training sample %d: %s; replacing the sample", i, exc)
                continue
            text_ids, text_mask = data.caption_text(i)
            return {"text_ids": text_ids, "text_mask": text_mask, "video": video,
                    "video_mask": video_mask, "index": i, "replaced": attempt > 0}
        raise VideoDecodeError(tried[0], f"and {len(tried) - 1} replacement samples failed to decode "
                                         f"too: {', '.join(tried[1:6])}")


class EvalTexts(Dataset):
    """Queries of an evaluation split. Item: text_ids, text_mask, index (query index)."""

    def __init__(self, data: RetrievalSplit):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.captions)

    def __getitem__(self, index: int) -> dict:
        text_ids, text_mask = self.data.caption_text(index)
        return {"text_ids": text_ids, "text_mask": text_mask, "index": index}


class EvalVideos(Dataset):
    """Videos of an evaluation split. Item: video, video_mask, index (video index), failed.

    A video that fails to decode raises VideoDecodeError (naming the file) unless
    cfg.allow_decode_errors: then failed=True, video all zero and video_mask all zero, and
    evaluation scores it as never retrieved and reports the count next to the metrics.
    """

    def __init__(self, data: RetrievalSplit):
        self.data = data

    def __len__(self) -> int:
        return len(self.data.video_ids)

    def __getitem__(self, index: int) -> dict:
        cfg = self.data.cfg
        try:
            video, video_mask = self.data.load_video(index, jitter=False)
            failed = False
        except VideoDecodeError as exc:
            if not cfg.allow_decode_errors:
                raise
            logger.warning("evaluation video %d: %s; it will count as never retrieved", index, exc)
            r = cfg.input_resolution
            video = torch.zeros(cfg.max_frames, 3, r, r)
            video_mask = torch.zeros(cfg.max_frames, dtype=torch.long)
            failed = True
        return {"video": video, "video_mask": video_mask, "index": index, "failed": failed}


@dataclass
class EvalData:
    """An evaluation split: rows of the similarity matrix are `texts`, columns `videos`.

    query_to_video: LongTensor[num_queries], the index into `videos` of each query's video.
    video_ids / captions: names for logs and per-query dumps. split: the split actually read.
    multi_sentence: several queries per video (MSVD, VATEX, LSMDC val); paragraph: captions of a
    video joined into one query (ActivityNet, DiDeMo).
    """
    texts: EvalTexts
    videos: EvalVideos
    query_to_video: torch.Tensor
    video_ids: list[str]
    captions: list[str]
    split: str
    multi_sentence: bool
    paragraph: bool


def build_train_dataset(cfg: DataConfig, tokenizer=None) -> TrainDataset:
    """The training split of cfg.datatype (MSR-VTT: cfg.train_list)."""
    return TrainDataset(RetrievalSplit(cfg, "train", tokenizer=tokenizer))


def build_eval_dataset(cfg: DataConfig, split: str = "test", tokenizer=None) -> EvalData:
    """split "val" or "test"; "val" reads the test files where a dataset has no validation set."""
    if split not in ("val", "test"):
        raise ValueError(f"evaluation split must be 'val' or 'test', got {split!r}")
    data = RetrievalSplit(cfg, split, tokenizer=tokenizer)
    q2v = torch.tensor(data.caption_video, dtype=torch.long)
    return EvalData(texts=EvalTexts(data), videos=EvalVideos(data), query_to_video=q2v,
                    video_ids=list(data.video_ids), captions=list(data.captions), split=data.split,
                    multi_sentence=bool(len(q2v) > len(data.video_ids)),
                    paragraph=data.reader.paragraph)
