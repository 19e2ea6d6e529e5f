"""CLIP BPE tokenizer against OpenAI's (``clip-anytorch``), and the ``tokenize`` helper."""

import hashlib
import random

import pytest
import torch
from clip.simple_tokenizer import SimpleTokenizer as ReferenceTokenizer  # test-only reference

from tvr.models import tokenization_clip
from tvr.models.tokenization_clip import DEFAULT_BPE_PATH, SimpleTokenizer, default_tokenizer, tokenize

SOT, EOT = 49406, 49407

WORDS = ("a man is playing guitar on stage while the crowd cheers loudly a woman cooks pasta in "
         "kitchen two dogs run across park children's cartoon shows cat jumping over fence "
         "people dancing at wedding reporter talks about weather forecast car drives down highway "
         "it's they're we've I'm you'll he'd don't can't won't").split()
PIECES = [
    # accents, other scripts, CJK
    "café", "naïve", "Ångström", "über", "piñata", "façade", "São Paulo", "Zürich", "crème brûlée",
    "Москва", "Ελλάδα", "日本語のテキスト", "中文字幕", "한국어", "ภาษาไทย", "עברית", "العربية", "हिन्दी",
    # mojibake (ftfy repairs these) and odd unicode
    "cafÃ©", "donâ€™t", "â€œquotedâ€\x9d", "SchÃ¶n", "ï¬\x81", "ﬁne", "Ｆｕｌｌｗｉｄｔｈ", "x\u200by",
    "e\u0301", "\u00a0nbsp\u00a0", "ß", "İstanbul", "ǅ",
    # emoji
    "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🎸🎶",
    # punctuation and numbers
    "!!!", "?!", "...", "--", "(parenthesis)", "[bracket]", "{brace}", "#hashtag", "@user", "e-mail",
    "100%", "3.14159", "1,000,000", "2024-01-31", "12:30pm", "$5.99", "€10", "1st", "2nd", "x2",
    "\"quoted\"", "'single'", "back`tick", "a/b\\c", "~tilde~", "^caret^", "|pipe|", "<tag>",
    # HTML entities (unescaped twice)
    "&amp;", "&#39;", "&quot;hi&quot;", "&lt;b&gt;", "&amp;amp;", "&#x27;", "&nbsp;", "&eacute;",
    # special-token look-alikes
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>",
    # contractions in capitals
    "IT'S", "They'RE", "o'clock",
]
WHITESPACE = [" ", "  ", "\t", "\n", " \r\n ", "\u3000", "   \t  "]


def make_corpus(size: int = 600, seed: int = 0):
    rng = random.Random(seed)
    corpus = ["", " ", "a", "A", "hello world", "Hello, World!", "\t  leading and trailing  \n"]
    corpus += PIECES
    while len(corpus) < size:
        parts = [rng.choice(WORDS if rng.random() < 0.6 else PIECES) for _ in range(rng.randint(1, 14))]
        if rng.random() < 0.3:
            parts = [p.capitalize() if rng.random() < 0.5 else p.upper() for p in parts]
        text = "".join(p + rng.choice(WHITESPACE) for p in parts)
        if rng.random() < 0.2:
            text = text.replace(" ", "")  # glued words, punctuation next to letters
        corpus.append(text)
    # Very long captions (~2000 characters and beyond).
    corpus.append(" ".join(rng.choice(WORDS + PIECES) for _ in range(300))[:2000])
    corpus.append("".join(rng.choice(PIECES) for _ in range(150)))
    corpus.append("supercalifragilisticexpialidocious" * 60)
    return corpus


@pytest.fixture(scope="module")
def reference():
    return ReferenceTokenizer()


@pytest.fixture(scope="module")
def ours():
    return SimpleTokenizer()


def test_shipped_vocabulary_is_clips():
    with open(DEFAULT_BPE_PATH, "rb") as f:
        data = f.read()
    assert len(data) == 1_356_917
    assert hashlib.sha256(data).hexdigest() == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_vocabulary_equals_reference(ours, reference):
    assert ours.encoder == reference.encoder
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (SOT, EOT, 49408)


def test_corpus_ids_equal_reference(ours, reference):
    corpus = make_corpus()
    assert len(corpus) >= 500 and max(len(t) for t in corpus) >= 2000
    mismatches = [text for text in corpus if ours.encode(text) != reference.encode(text)]
    assert not mismatches, f"{len(mismatches)} captions differ, e.g. {mismatches[:3]!r}"


def test_known_ids(ours):
    assert ours.encode("a dog runs") == [320, 1929, 5586]
    assert ours.encode("") == []
    assert ours.encode("<|endoftext|>") == [EOT]
    assert ours.encode("cafÃ©") == ours.encode("café")  # ftfy repairs mojibake
    assert ours.encode("&amp;") == ours.encode("&")  # HTML entities are unescaped


def test_decode_round_trip(ours, reference):
    for text in ["a man is playing guitar on stage", "children watch cartoons", "café 日本語 😀"]:
        ids = ours.encode(text)
        assert ours.decode(ids).strip() == text
        assert ours.decode(ids) == reference.decode(ids)
    # Lossy where CLIP's is: lowercase, whitespace collapsed, a space after every word piece.
    assert ours.decode(ours.encode("Hello,   World!")) == "hello , world ! "
    assert ours.decode(ours.encode("children's")) == "children 's "
    assert ours.decode([SOT, 320, EOT]) == reference.decode([SOT, 320, EOT])
    assert ours.decode(torch.tensor([320, 1929])) == "a dog "


def test_tokenize_pads_and_masks(ours):
    ids, mask = tokenize(["a dog runs", "", "a"], max_words=7, tokenizer=ours)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[SOT, 320, 1929, 5586, EOT, 0, 0],
                            [SOT, EOT, 0, 0, 0, 0, 0],
                            [SOT, 320, EOT, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0, 0],
                             [1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0]]


def test_tokenize_truncates_to_max_words_minus_two(ours):
    ids, mask = tokenize("a dog runs", max_words=4, tokenizer=ours)
    assert ids.tolist() == [[SOT, 320, 1929, EOT]] and mask.tolist() == [[1, 1, 1, 1]]
    ids, mask = tokenize("a dog runs", max_words=2, tokenizer=ours)
    assert ids.tolist() == [[SOT, EOT]] and mask.tolist() == [[1, 1]]
    ids, mask = tokenize("a dog runs", max_words=5, tokenizer=ours)  # exact fit
    assert ids.tolist() == [[SOT, 320, 1929, 5586, EOT]] and mask.tolist() == [[1] * 5]
    long_text = make_corpus()[-3]
    ids, mask = tokenize([long_text], max_words=32, tokenizer=ours)
    assert ids.shape == (1, 32) and mask.sum() == 32
    assert ids[0, 1:31].tolist() == ours.encode(long_text)[:30] and ids[0, 31] == EOT
    with pytest.raises(ValueError, match="max_words"):
        tokenize("a", max_words=1, tokenizer=ours)


def test_eot_is_the_argmax(ours):
    """The text encoder pools at ``ids.argmax(-1)``: EOT must be the largest id in every row."""
    ids, mask = tokenize(make_corpus()[:50], max_words=32, tokenizer=ours)
    assert torch.equal(ids.argmax(-1), mask.sum(-1) - 1)


def test_default_tokenizer_is_lazy_and_shared(monkeypatch):
    default_tokenizer.cache_clear()
    assert default_tokenizer.cache_info().currsize == 0  # nothing built until first use
    built = []
    real = tokenization_clip.SimpleTokenizer
    monkeypatch.setattr(tokenization_clip, "SimpleTokenizer", lambda *a, **k: built.append(1) or real(*a, **k))
    ids_a, _ = tokenize("a dog runs", max_words=8)
    ids_b, _ = tokenize(["a dog runs"], max_words=8)
    assert built == [1] and default_tokenizer() is default_tokenizer()
    assert torch.equal(ids_a, ids_b)
    default_tokenizer.cache_clear()
