"""A clustered synthetic corpus of video tokens with planted query matches (benchmarks and tests).

Uniform random vectors make approximate search look either trivial or hopeless; real CLIP tokens
are clustered. So the corpus is built like real data in the ways that matter to an index:
- a shared image direction and a shared text direction (the "modality gap": every image token
  resembles every other one, cosine about 0.4);
- topics, concepts inside topics, and concept popularity that follows a Zipf law (a few concepts
  appear in very many videos, so their neighbourhoods are crowded);
- each video is 1-4 scenes (one concept each) over up to `frames` frames, plus a per-video style;
  frame tokens are scene + style + noise, video tokens are frames mixed with the video's mean,
  expansion tokens the video mean plus a shared learned direction;
- a query is planted on one video: content words from its scenes (with a bit of its style, the
  "details" a caption names), function words near the text direction, and EOT / padding
  (query expansion) tokens near the mean of the content words.
Everything is deterministic in (spec, seed); videos are generated in fixed blocks so any range
of videos can be produced without the ones before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024  # videos per generator block


@dataclass(frozen=True)
class CorpusSpec:
    dim: int = 512
    frames: int = 12  # frame tokens per video (max)
    expansion: int = 2  # extra video-branch tokens; video tokens = frames + expansion
    query_tokens: int = 32
    topics: int = 64
    concepts: int = 4096
    zipf: float = 1.1  # concept popularity exponent
    function_words: int = 300
    # Noise (frame-to-frame and token-to-token variation) spans this many directions; 0: all of
    # them (isotropic). Real embeddings vary along far fewer directions than they have dimensions.
    noise_rank: int = 0
    seed: int = 0

    @property
    def tokens_per_video(self) -> int:
        return 2 * self.frames + self.expansion


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class SyntheticCorpus:
    def __init__(self, spec: CorpusSpec = CorpusSpec()):
        self.spec = spec
        s = spec
        rng = np.random.default_rng([s.seed, 0])
        d = s.dim
        self.img_mean = _unit(rng.standard_normal(d))
        self.txt_mean = _unit(0.3 * self.img_mean + _unit(rng.standard_normal(d)))
        topics = _unit(rng.standard_normal((s.topics, d)))
        topic_of = rng.integers(0, s.topics, s.concepts)
        self.concepts = _unit(topics[topic_of] + 0.8 * _unit(rng.standard_normal((s.concepts, d))))
        popularity = 1.0 / np.arange(1, s.concepts + 1) ** s.zipf
        self.popularity = rng.permutation(popularity / popularity.sum())
        self.expansion_dirs = _unit(rng.standard_normal((s.expansion, d)))
        self.function_vecs = _unit(rng.standard_normal((s.function_words, d)))
        self.noise_basis = (np.linalg.qr(rng.standard_normal((d, s.noise_rank)))[0].astype(np.float32)
                            if s.noise_rank else None)  # D x rank, orthonormal columns

    def _noise(self, rng, shape, dtype=np.float32) -> np.ndarray:
        """Unit noise vectors of shape (..., D): isotropic, or inside the noise subspace."""
        if self.noise_basis is None:
            return _unit(rng.standard_normal(tuple(shape) + (self.spec.dim,), dtype=dtype))
        z = rng.standard_normal(tuple(shape) + (self.spec.noise_rank,), dtype=dtype)
        return _unit(z @ self.noise_basis.T)

    # ---- videos ----------------------------------------------------------------------------
    def _layout(self, b: int) -> dict:
        """Scene layout and style of the videos of block b (cheap: no tokens)."""
        s = self.spec
        rng = np.random.default_rng([s.seed, 1, b])
        n = BLOCK
        return {
            "num_frames": np.where(rng.random(n) < 0.8, s.frames, rng.integers(4, s.frames + 1, n)),
            "num_scenes": rng.integers(1, 5, n),
            "scenes": rng.choice(s.concepts, size=(n, 4), p=self.popularity),
            "style": _unit(rng.standard_normal((n, s.dim))).astype(np.float32),
        }

    def _block(self, b: int):
        """Tokens of videos [b*BLOCK, (b+1)*BLOCK)."""
        s = self.spec
        lay = self._layout(b)
        rng = np.random.default_rng([s.seed, 3, b])
        n, t = BLOCK, s.frames
        num_frames, num_scenes, style = lay["num_frames"], lay["num_scenes"], lay["style"]
        # Frame j of a video with k scenes over f frames belongs to scene floor(j * k / f).
        j = np.arange(t)[None, :]
        scene_of_frame = np.minimum(j * num_scenes[:, None] // num_frames[:, None], 3)  # n x T
        concept_of_frame = np.take_along_axis(lay["scenes"], scene_of_frame, axis=1)  # n x T
        noise = self._noise(rng, (n, t))
        frames = _unit(0.9 * self.img_mean + self.concepts[concept_of_frame] + 0.35 * style[:, None]
                       + 0.45 * noise).astype(np.float32)  # n x T x D
        frame_mask = j < num_frames[:, None]  # n x T
        frames[~frame_mask] = 0
        mean = _unit(frames.sum(1))  # n x D
        noise = self._noise(rng, (n, t))
        context = _unit(frames + 0.5 * mean[:, None] + 0.3 * noise)  # n x T x D
        noise = self._noise(rng, (n, s.expansion))
        extra = _unit(mean[:, None] + 0.5 * self.expansion_dirs[None] + 0.3 * noise)  # n x E x D
        video = np.concatenate([context, extra], axis=1).astype(np.float32)  # n x (T+E) x D
        video_mask = np.concatenate([frame_mask, np.ones((n, s.expansion), bool)], axis=1)
        video[~video_mask] = 0
        return frames, frame_mask, video, video_mask

    def videos(self, start: int, stop: int):
        """frame tokens (n x T x D), frame mask, video tokens (n x (T+E) x D), video mask; float32."""
        parts = []
        for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            lo = max(start, b * BLOCK) - b * BLOCK
            hi = min(stop, (b + 1) * BLOCK) - b * BLOCK
            f, fm, v, vm = self._block(b)
            parts.append((f[lo:hi], fm[lo:hi], v[lo:hi], vm[lo:hi]))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))

    # ---- queries ---------------------------------------------------------------------------
    def queries(self, targets: np.ndarray, seed: int = 1):
        """Query tokens (Q x Lq x D float32) planted on the videos `targets`; every position is a
        query token (query expansion), so the mask is all ones."""
        s = self.spec
        rng = np.random.default_rng([s.seed, 2, seed])
        out = np.empty((len(targets), s.query_tokens, s.dim), np.float32)
        for qi, vid in enumerate(np.asarray(targets)):
            b, r = divmod(int(vid), BLOCK)
            layout = self._layout(b)
            scenes = layout["scenes"][r, :layout["num_scenes"][r]]
            words = int(rng.integers(6, 15))
            n_content = int(rng.integers(2, 6))
            content = _unit(0.9 * self.txt_mean + self.concepts[rng.choice(scenes, n_content)]
                            + 0.5 * layout["style"][r] + 0.6 * self._noise(rng, (n_content,), np.float64))
            function = _unit(self.txt_mean + self.function_vecs[rng.integers(0, s.function_words, words - n_content)]
                             + 0.3 * self._noise(rng, (words - n_content,), np.float64))
            body = np.concatenate([content, function])[rng.permutation(words)]
            sentence = content.mean(0)
            n_pad = s.query_tokens - words - 1  # SOT + words + EOT + padding
            tail = _unit(self.txt_mean + sentence + 0.5 * self._noise(rng, (n_pad,), np.float64))
            sot = _unit(self.txt_mean + 0.2 * self.function_vecs[0])
            out[qi] = np.concatenate([sot[None], body, tail])[: s.query_tokens]
        return out
