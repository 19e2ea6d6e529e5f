"""Text tokenizers with one face for every backbone: ``tokenize(texts, max_words) -> (ids, mask)``.

Both tensors are ``LongTensor N x max_words``; ``mask`` is 1 on the real tokens (start/end tokens
included) and 0 on the padding. The mask is built from each text's length, never read off the ids:
SigLIP pads with the same id as its end token, so ``ids != pad_id`` cannot tell them apart.

* ``CLIPTextTokenizer``: CLIP's BPE (``tokenization_clip``), for OpenAI CLIP.
* ``OpenCLIPBPETokenizer``: open_clip's own CLIP-BPE tokenizer, for open_clip models that use it.
* ``SentencePieceTokenizer``: a sentencepiece model read from a local folder (SigLIP, SigLIP 2): the
  text is cleaned as the model's open_clip config says, encoded, closed with the end token
  (truncated texts keep it), and padded with the pad token.

All are light and picklable, so a DataLoader worker receives the tokenizer, not the model.
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch

from . import tokenization_clip

logger = logging.getLogger(__name__)

Texts = Union[str, Sequence[str]]

# Where a folder may keep its sentencepiece model (open_clip / Hugging Face names), in order of preference.
SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.model")
# Files that name the special tokens (Hugging Face layout, as in the SigLIP hub repositories).
SPECIAL_TOKEN_FILES = ("special_tokens_map.json", "tokenizer_config.json")
# open_clip's text cleanings (``tokenizer_kwargs.clean`` in a model config).
CLEANINGS = ("canonicalize", "lower", "whitespace")


def _as_list(texts: Texts) -> List[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _pack(rows: List[List[int]], max_words: int, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token rows (already at most max_words long) -> (ids, mask), N x max_words each."""
    ids = torch.full((len(rows), max_words), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), max_words, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


class CLIPTextTokenizer:
    """OpenAI CLIP's BPE: SOT, at most ``max_words - 2`` tokens, EOT, zeros."""

    pad_id = 0

    def encode(self, text: str) -> List[int]:
        return tokenization_clip.default_tokenizer().encode(text)

    def tokenize(self, texts: Texts, max_words: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return tokenization_clip.tokenize(texts, max_words)


class OpenCLIPBPETokenizer:
    """open_clip's CLIP-BPE tokenizer (OpenCLIP / LAION / DataComp models), with the text cleaning
    their config asks for. Ids are open_clip's; the mask ends at the first end-of-text token."""

    pad_id = 0

    def __init__(self, clean: str = "lower"):
        _check_cleaning(clean)
        self.clean = clean
        self._tok = None

    def __getstate__(self):
        return {"clean": self.clean}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def _tokenizer(self):
        if self._tok is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tok = SimpleTokenizer(clean=self.clean)
        return self._tok

    def encode(self, text: str) -> List[int]:
        return self._tokenizer.encode(text)

    def tokenize(self, texts: Texts, max_words: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if max_words < 2:
            raise ValueError(f"max_words must be at least 2 (start and end tokens), got {max_words}")
        tok = self._tokenizer
        ids = tok(_as_list(texts), context_length=max_words)  # N x max_words, zero padded
        eot = (ids == tok.eot_token_id).int().argmax(dim=1)  # N: the first end token (always present)
        mask = (torch.arange(max_words).unsqueeze(0) <= eot.unsqueeze(1)).long()
        return ids.long(), mask


def _check_cleaning(clean: str) -> None:
    if clean not in CLEANINGS:
        raise ValueError(f"unknown text cleaning {clean!r}; open_clip's are {', '.join(CLEANINGS)}")


def _token_content(value) -> Optional[str]:
    """A special token as Hugging Face files store it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def find_sentencepiece_model(path: str) -> Optional[str]:
    """The sentencepiece model in ``path`` (a ``.model`` file or a folder holding one), or None."""
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return path if path.endswith(".model") else None
    if not os.path.isdir(path):
        return None
    for name in SENTENCEPIECE_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    models = sorted(f for f in os.listdir(path) if f.endswith(".model"))
    return os.path.join(path, models[0]) if len(models) == 1 else None


class SentencePieceTokenizer:
    """A sentencepiece tokenizer from a local folder: ``clean(text)`` pieces, then the end token.

    The folder holds the sentencepiece model (``spiece.model`` or ``tokenizer.model``) and, as the
    model repositories on the Hugging Face hub do, ``special_tokens_map.json`` and/or
    ``tokenizer_config.json`` naming ``eos_token`` and ``pad_token``. Without them the
    sentencepiece model's own end id is used, and ``pad_id`` must be given (SigLIP pads with its
    end id 1, SigLIP 2 with 0: a wrong pad id silently changes every bidirectional text embedding).
    """

    def __init__(self, path: str, clean: str = "whitespace", pad_id: Optional[int] = None):
        _check_cleaning(clean)
        model_file = find_sentencepiece_model(path)
        if model_file is None:
            raise FileNotFoundError(
                f"No sentencepiece tokenizer model in {path}: expected one of {', '.join(SENTENCEPIECE_FILES)} "
                f"(with special_tokens_map.json) in that folder, or a path to a .model file")
        import sentencepiece

        self.path = model_file
        self.clean = clean
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
        folder = os.path.dirname(model_file)
        named = self._read_special_tokens(folder)
        self.eos_id = self._piece_id(named.get("eos_token"), "eos_token", folder) if "eos_token" in named else self._sp.eos_id()
        if "pad_token" in named:
            self.pad_id = self._piece_id(named["pad_token"], "pad_token", folder)
        elif pad_id is not None:
            self.pad_id = pad_id
        else:
            raise ValueError(
                f"{folder}: no pad_token in {' or '.join(SPECIAL_TOKEN_FILES)}; the tokenizer cannot tell "
                f"which id pads a text. Copy those files from the model's hub repository next to "
                f"{os.path.basename(model_file)}.")
        if self.eos_id < 0:
            raise ValueError(f"{model_file}: the sentencepiece model has no end-of-sequence token and no "
                             f"eos_token is named in {' or '.join(SPECIAL_TOKEN_FILES)}")
        from open_clip.tokenizer import get_clean_fn

        self._clean_fn = get_clean_fn(clean)
        logger.info("sentencepiece tokenizer %s: %d pieces, eos id %d, pad id %d, cleaning %r",
                    model_file, self._sp.get_piece_size(), self.eos_id, self.pad_id, clean)

    @staticmethod
    def _read_special_tokens(folder: str) -> dict:
        named = {}
        for name in reversed(SPECIAL_TOKEN_FILES):  # the first file listed wins
            file = os.path.join(folder, name)
            if not os.path.isfile(file):
                continue
            try:
                with open(file, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{file}: not a readable JSON file ({e})") from e
            for key in ("eos_token", "pad_token"):
                content = _token_content(data.get(key)) if isinstance(data, dict) else None
                if content is not None:
                    named[key] = content
        return named

    def _piece_id(self, piece: str, key: str, folder: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i):
            raise ValueError(f"{folder}: {key} {piece!r} is not a piece of {self.path}")
        return i

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sp"] = self._sp.serialized_model_proto()
        state.pop("_clean_fn")
        return state

    def __setstate__(self, state):
        import sentencepiece
        from open_clip.tokenizer import get_clean_fn

        proto = state.pop("_sp")
        self.__dict__.update(state)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        self._clean_fn = get_clean_fn(self.clean)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> List[int]:
        """Piece ids of the cleaned text, without the end token."""
        return self._sp.encode(self._clean_fn(text))

    def tokenize(self, texts: Texts, max_words: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """At most ``max_words - 1`` pieces, the end token (kept on truncation), then pad ids."""
        if max_words < 2:
            raise ValueError(f"max_words must be at least 2 (a token and the end token), got {max_words}")
        rows = [self.encode(t)[:max_words - 1] + [self.eos_id] for t in _as_list(texts)]
        return _pack(rows, max_words, self.pad_id)
