"""CLIP's byte-level BPE tokenizer, written for VideoColBERT, and the ``max_words`` id helper.

Produces exactly the ids of OpenAI's tokenizer (tests compare on a varied corpus), because the
pretrained text encoder only understands those. Pipeline per caption:

1. clean: ``ftfy.fix_text`` (repairs mojibake such as "cafÃ©"), HTML-unescape twice, collapse
   whitespace runs, lowercase;
2. pre-tokenise with a regex into letter runs, single digits, punctuation runs and English
   contractions (the special tokens ``<|startoftext|>`` / ``<|endoftext|>`` are kept whole);
3. map each pre-token's UTF-8 bytes to printable characters (so every byte has a symbol and no
   text is ever out of vocabulary), mark the end of the word with ``</w>``, and apply the BPE
   merges in rank order.
"""

import functools
import gzip
import html
import os
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import ftfy
import regex
import torch

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
_END_OF_WORD = "</w>"
_NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file: vocabulary of 49,408

# Letter runs, single digits, runs of other non-space symbols, contractions, special tokens.
_PRETOKEN_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                     r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


def _byte_symbols() -> List[str]:
    """Symbol for each byte value 0..255. Printable Latin-1 bytes stand for themselves; the
    remaining 68 (control characters, space, ...) get the code points 256, 257, ... in byte order,
    so BPE never sees whitespace or control characters."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _vocabulary_order(symbols: List[str]) -> List[str]:
    """OpenAI's id order: printable bytes first, then the remapped ones (each in byte order)."""
    printable = [s for s in symbols if ord(s) < 256]
    remapped = [s for s in symbols if ord(s) >= 256]
    return printable + remapped


def clean_text(text: str) -> str:
    """ftfy repair, double HTML unescape, whitespace collapse, lowercase (OpenAI's cleaning)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    """Byte-level BPE with CLIP's vocabulary: ``encode`` / ``decode`` between text and ids."""

    def __init__(self, bpe_path: str = DEFAULT_BPE_PATH):
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]  # line 0 is a header
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{bpe_path} is not CLIP's BPE merge list")
        self._merge_rank: Dict[Tuple[str, str], int] = {m: i for i, m in enumerate(merges)}

        byte_symbols = _byte_symbols()
        self._byte_to_symbol = byte_symbols
        self._symbol_to_byte = {s: b for b, s in enumerate(byte_symbols)}
        base = _vocabulary_order(byte_symbols)
        vocab = base + [s + _END_OF_WORD for s in base] + [a + b for a, b in merges] + [SOT_TEXT, EOT_TEXT]
        self.encoder: Dict[str, int] = {piece: i for i, piece in enumerate(vocab)}
        self.decoder: Dict[int, str] = {i: piece for piece, i in self.encoder.items()}
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]
        self.vocab_size = len(vocab)
        self._pattern = regex.compile(_PRETOKEN_PATTERN, regex.IGNORECASE)
        self._cache: Dict[str, Tuple[str, ...]] = {SOT_TEXT: (SOT_TEXT,), EOT_TEXT: (EOT_TEXT,)}

    def _bpe(self, word: str) -> Tuple[str, ...]:
        """Split one pre-token (already in byte symbols) into vocabulary pieces."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            # The adjacent pair merged earliest in training goes first.
            ranked = [(self._merge_rank.get(pair, _NUM_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, (left, right) = min(ranked)
            if rank == _NUM_MERGES:  # no adjacent pair is a known merge
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence, left to right, without overlaps
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        if len(self._cache) < 100_000:  # bound memory on huge corpora
            self._cache[word] = result
        return result

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` without SOT/EOT (add them yourself, or use ``tokenize``)."""
        ids: List[int] = []
        for pretoken in self._pattern.findall(clean_text(text)):
            symbols = "".join(self._byte_to_symbol[b] for b in pretoken.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: each word followed by a space; invalid UTF-8 becomes U+FFFD."""
        # Every character of a piece stands for one byte (the end-of-word marker and the special
        # tokens are plain ASCII), so decode bytes first and turn the markers into spaces after.
        pieces = "".join(self.decoder[int(i)] for i in ids)
        raw = bytes(self._symbol_to_byte[c] for c in pieces)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer over the shipped vocabulary, built on first use (about a second)."""
    return SimpleTokenizer()


def tokenize(texts: Union[str, Sequence[str]], max_words: int,
             tokenizer: SimpleTokenizer = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fixed-length ids for the text encoder.

    Returns ``(ids, mask)``, both ``LongTensor`` of shape ``N x max_words`` (``N = 1`` for a single
    string): SOT, at most ``max_words - 2`` BPE tokens (longer captions are truncated), EOT, then
    zeros; ``mask`` is 1 on SOT..EOT and 0 on the padding.
    """
    if max_words < 2:
        raise ValueError(f"max_words must be at least 2 (room for SOT and EOT), got {max_words}")
    if isinstance(texts, str):
        texts = [texts]
    tok = tokenizer if tokenizer is not None else default_tokenizer()
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    mask = torch.zeros(len(texts), max_words, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [tok.sot_token_id] + tok.encode(text)[:max_words - 2] + [tok.eot_token_id]
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids, mask
