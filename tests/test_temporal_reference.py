"""Temporal encoder against a hand-written reference built from the same weights.

The reference (``reference_video_tokens``) is a plain per-sample, per-head loop in float64: frame
tokens plus their position embedding, the expansion tokens appended, pre-norm attention blocks
(CLIP's layout and QuickGELU) whose attention ignores padded frames, then a residual from the
input frame tokens on the frame outputs. It reads only the encoder's state dict.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import load_clip

MAX_FRAMES, EXPANSION = 6, 2


def _layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps=1e-5)


def _attention(x, valid, state, prefix, heads):
    """x: L x D, valid: L (bool). Multi-head self-attention, keys that are not valid ignored."""
    length, width = x.shape
    qkv = x @ state[prefix + "in_proj_weight"].T + state[prefix + "in_proj_bias"]  # L x 3D
    q, k, v = qkv.split(width, dim=-1)
    dh = width // heads
    out = torch.empty_like(x)
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(dh)  # L x L
        logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
        out[:, cols] = torch.softmax(logits, dim=-1) @ v[:, cols]
    return out @ state[prefix + "out_proj.weight"].T + state[prefix + "out_proj.bias"]


def reference_video_tokens(state, frames, frame_mask, heads):
    """state: the temporal encoder's state dict; frames: B x T x D; frame_mask: B x T.

    Returns B x (T + N) x D in float64 (rows of padded frames are computed but meaningless).
    """
    state = {k: v.detach().double() for k, v in state.items()}
    frames = frames.double()
    batch, num_frames, _ = frames.shape
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    expansion = state["expansion_tokens"]  # N x D
    out = []
    for b in range(batch):
        x = torch.cat([frames[b] + state["frame_position_embedding"][:num_frames], expansion])  # (T+N) x D
        valid = torch.cat([frame_mask[b].bool(), torch.ones(len(expansion), dtype=torch.bool)])
        for i in range(layers):
            p = f"transformer.resblocks.{i}."
            x = x + _attention(_layer_norm(x, state, p + "ln_1."), valid, state, p + "attn.", heads)
            h = _layer_norm(x, state, p + "ln_2.") @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
            h = h * torch.sigmoid(1.702 * h)  # QuickGELU, as CLIP's text blocks
            x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
        out.append(torch.cat([x[:num_frames] + frames[b], x[num_frames:]]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def encoder():
    """The model's temporal encoder (CLIP-initialised), with position embeddings, expansion tokens and
    norms made large enough that a swapped, reversed or dropped term shows clearly."""
    torch.manual_seed(0)
    model = VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=MAX_FRAMES, visual_expansion=EXPANSION))
    enc = model.temporal.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        enc.frame_position_embedding.copy_(0.5 * torch.randn(enc.frame_position_embedding.shape, generator=g))
        enc.expansion_tokens.copy_(0.5 * torch.randn(enc.expansion_tokens.shape, generator=g))
        for name, p in enc.named_parameters():
            if "ln_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return enc


def heads_of(enc):
    return enc.frame_position_embedding.shape[1] // 64  # width / 64 heads


def make_frames(batch=3, frames=MAX_FRAMES, real=(6, 4, 1), seed=2):
    """Normalised frame tokens; padded slots hold NON-ZERO garbage (a masked slot must be ignored
    whatever it holds)."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(batch, frames, 128, generator=g), dim=-1)
    mask = torch.zeros(batch, frames, dtype=torch.long)
    for i, n in enumerate(real):
        mask[i, :n] = 1
    x = torch.where(mask.bool().unsqueeze(-1), x, 3.0 * torch.randn(x.shape, generator=g))
    return x, mask


def real_rows(mask):
    """B x (T + N) bool: the rows that mean something (real frames and the expansion tokens)."""
    return torch.cat([mask.bool(), torch.ones(mask.shape[0], EXPANSION, dtype=torch.bool)], dim=1)


def test_forward_matches_the_reference(encoder):
    frames, mask = make_frames()
    with torch.no_grad():
        tokens, out_mask = encoder(frames, mask)
    assert tokens.shape == (3, MAX_FRAMES + EXPANSION, 128)
    assert torch.equal(out_mask.bool(), real_rows(mask))
    ref = reference_video_tokens(encoder.state_dict(), frames, mask, heads_of(encoder))
    keep = real_rows(mask)
    torch.testing.assert_close(tokens.double()[keep], ref[keep], rtol=1e-5, atol=2e-5)


def test_padded_frames_with_content_change_no_real_output(encoder):
    """Masked slots may hold anything (here: large random vectors); real outputs are those of the
    same video given without the padding at all."""
    frames, mask = make_frames()
    other = frames.clone()
    other[~mask.bool()] = 50.0 * torch.randn(int((~mask.bool()).sum()), 128)
    with torch.no_grad():
        a, _ = encoder(frames, mask)
        b, _ = encoder(other, mask)
        short, _ = encoder(frames[1:2, :4], mask[1:2, :4])  # video 1 has 4 real frames: no padding
    keep = real_rows(mask)
    torch.testing.assert_close(a[keep], b[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[1][keep[1]], short[0], rtol=0, atol=1e-5)


def test_frame_order_matters(encoder):
    """Position embeddings make the video tokens depend on the order of the frames."""
    frames, mask = make_frames(batch=1, real=(6,))
    with torch.no_grad():
        forward, _ = encoder(frames, mask)
        backward, _ = encoder(frames.flip(1), mask)
    assert (forward[0, MAX_FRAMES:] - backward[0, MAX_FRAMES:]).abs().max() > 1e-2  # expansion outputs
    assert (forward[0, :MAX_FRAMES].flip(0) - backward[0, :MAX_FRAMES]).abs().max() > 1e-2


def test_without_position_embeddings_the_encoder_is_permutation_equivariant(encoder):
    frames, mask = make_frames(batch=2, real=(6, 5))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    saved = encoder.frame_position_embedding.detach().clone()
    try:
        with torch.no_grad():
            encoder.frame_position_embedding.zero_()
            a, _ = encoder(frames, mask)
            b, _ = encoder(frames[:, perm], mask[:, perm])
    finally:
        with torch.no_grad():
            encoder.frame_position_embedding.copy_(saved)
    keep = mask.bool()
    a_frames, b_frames = a[:, :MAX_FRAMES], b[:, :MAX_FRAMES]
    torch.testing.assert_close(b_frames[keep[:, perm]], a_frames[:, perm][keep[:, perm]], rtol=0, atol=1e-5)
    torch.testing.assert_close(b[:, MAX_FRAMES:], a[:, MAX_FRAMES:], rtol=0, atol=1e-5)


def test_identity_blocks_leave_the_residual_and_the_expansion_tokens(encoder):
    """Known answer: with every block's output projections zero, each block is the identity, so a
    frame's output is its input plus the residual (2 f + p) and an expansion output is its token."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    for k in state:
        if k.endswith(("attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")):
            state[k].zero_()
    torch.manual_seed(0)
    identity = VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=MAX_FRAMES, visual_expansion=EXPANSION)).temporal
    identity.load_state_dict(state)
    frames, mask = make_frames()
    with torch.no_grad():
        tokens, _ = identity.eval()(frames, mask)
    pos = state["frame_position_embedding"]
    keep = mask.bool()
    torch.testing.assert_close(tokens[:, :MAX_FRAMES][keep], (2 * frames + pos)[keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens[:, MAX_FRAMES:], state["expansion_tokens"].expand(3, -1, -1), rtol=0, atol=1e-6)
