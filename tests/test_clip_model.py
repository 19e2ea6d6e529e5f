"""CLIP ViT encoders against OpenAI's reference implementation (the ``clip-anytorch`` package).

Random weights (perturbed so that biases and norms are not at their trivial init values), fp32 on
the CPU, for the ViT-B/32, ViT-B/16 and tiny shapes. Large models are built once per module.
"""

import dataclasses

import clip.model as ref_clip  # test-only reference: OpenAI's code
import pytest
import torch

from tvr.models import module_clip
from tvr.models.module_clip import (CLIP, SCRATCH_CONFIGS, QuickGELU, ResidualAttentionBlock, build_model,
                                    infer_config, load_clip)

SOT, EOT = 49406, 49407
TOL = 1e-5


def perturbed_state_dict(model: torch.nn.Module, seed: int) -> dict:
    """``model``'s weights with N(0, 0.02^2) noise added to every vector (biases, norms, class
    embedding): those start at trivial values (0 / 1) that could hide a wrong formula. Matrices
    are random already."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) if v.dim() <= 1 else v.clone()
            for k, v in model.state_dict().items()}


def reference_from(state_dict: dict, config) -> torch.nn.Module:
    """OpenAI's model holding exactly these fp32 weights. Built on the meta device (its random
    init would cost seconds) and given the tensors; its causal mask is a plain attribute, not
    state, so it is rebuilt on the CPU."""
    with torch.device("meta"):
        ref = ref_clip.CLIP(**dataclasses.asdict(config))
    ref.load_state_dict(state_dict, strict=True, assign=True)
    for block in ref.transformer.resblocks:
        block.attn_mask = ref.build_attention_mask()
    return ref.eval()


def random_text(num: int, length: int, eot_positions, seed: int) -> torch.Tensor:
    """``num x length`` ids: SOT, random word pieces, EOT at the given position, zero padding."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(1, SOT, (num, length), generator=gen)
    text[:, 0] = SOT
    for row, pos in enumerate(eot_positions):
        text[row, pos] = EOT
        text[row, pos + 1:] = 0
    return text


# (config name, image batch): B/16 at 224 px is the slowest forward, so one image.
SHAPES = [("tiny", 2), ("ViT-B/32", 2), ("ViT-B/16", 1)]


@pytest.fixture(scope="module", params=SHAPES, ids=[s for s, _ in SHAPES])
def pair(request):
    """(ours, reference, image batch) with identical random weights."""
    name, batch = request.param
    torch.manual_seed(0)
    ours = load_clip(f"scratch:{name}")
    state = perturbed_state_dict(ours, seed=1)
    ours.load_state_dict(state, strict=True)
    return ours, reference_from(state, SCRATCH_CONFIGS[name]), batch


def test_state_dict_keys_and_shapes_match_reference(pair):
    ours, ref, _ = pair
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert list(ours_shapes) == list(ref_shapes)  # same keys, same order
    assert ours_shapes == ref_shapes


def test_state_dicts_load_strictly_both_ways(pair):
    ours, ref, _ = pair
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)


def test_encode_image_matches_reference(pair):
    ours, ref, batch = pair
    res = ours.input_resolution
    image = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = ours.encode_image(image), ref.encode_image(image)
    assert got.shape == (batch, ours.embed_dim)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_encode_text_matches_reference_at_context_length(pair):
    ours, ref, _ = pair
    text = random_text(3, 77, eot_positions=[5, 31, 76], seed=3)
    with torch.no_grad():
        got, want = ours.encode_text(text), ref.encode_text(text)
    assert got.shape == (3, ours.embed_dim)
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_short_text_is_the_causal_prefix(pair):
    """With L < 77 positions the result equals the first L positions of the 77-token run (the
    causal mask hides later positions), and the pooled output equals the reference's."""
    ours, ref, _ = pair
    length = 32
    text77 = random_text(3, 77, eot_positions=[1, 12, 31], seed=4)
    short = text77[:, :length]
    with torch.no_grad():
        tokens_short = ours.encode_text_tokens(short)
        tokens_full = ours.encode_text_tokens(text77)
        pooled_short = ours.encode_text(short)
        pooled_ref = ref.encode_text(text77)
    assert tokens_short.shape == (3, length, ours.embed_dim)
    torch.testing.assert_close(tokens_short, tokens_full[:, :length], rtol=0, atol=TOL)
    torch.testing.assert_close(pooled_short, pooled_ref, rtol=0, atol=TOL)


def test_encode_text_tokens_at_eot_equals_encode_text(pair):
    ours, _, _ = pair
    text = random_text(3, 20, eot_positions=[2, 9, 19], seed=5)
    with torch.no_grad():
        tokens = ours.encode_text_tokens(text)  # N x L x D
        pooled = ours.encode_text(text)
    # Same numbers up to matmul blocking (a batched vs a single projection).
    torch.testing.assert_close(tokens[torch.arange(3), text.argmax(-1)], pooled, rtol=0, atol=TOL)


def test_properties(pair):
    ours, ref, _ = pair
    assert ours.embed_dim == ref.text_projection.shape[1]
    assert ours.input_resolution == ref.visual.input_resolution
    assert ours.context_length == 77 and ours.vocab_size == 49408
    assert ours.dtype == torch.float32


def test_scratch_init_is_openais():
    """Same seed -> bit-identical initial weights to OpenAI's CLIP constructor (same init scheme,
    same order of random draws)."""
    cfg = SCRATCH_CONFIGS["tiny"]
    torch.manual_seed(123)
    ours = load_clip("scratch:tiny")
    torch.manual_seed(123)
    ref = ref_clip.CLIP(**dataclasses.asdict(cfg))
    ref_state = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def test_tiny_config_as_contracted():
    cfg = SCRATCH_CONFIGS["tiny"]
    assert (cfg.embed_dim, cfg.image_resolution, cfg.vision_patch_size, cfg.vision_width, cfg.vision_layers) == \
        (128, 64, 16, 128, 2)
    assert (cfg.transformer_width, cfg.transformer_heads, cfg.transformer_layers) == (128, 2, 4)
    assert (cfg.context_length, cfg.vocab_size) == (77, 49408)


@pytest.mark.parametrize("name", list(SCRATCH_CONFIGS))
def test_config_is_inferred_from_shapes(name):
    """Every built-in shape (incl. L/14 and L/14@336px, built on the meta device: no memory)
    round-trips through shape inference, and its text width equals embed_dim."""
    cfg = SCRATCH_CONFIGS[name]
    with torch.device("meta"):
        model = CLIP.from_config(cfg)
    assert infer_config(model.state_dict()) == cfg
    assert cfg.transformer_width == cfg.embed_dim
    with torch.device("meta"):
        ref_shapes = {k: v.shape for k, v in ref_clip.CLIP(**dataclasses.asdict(cfg)).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == ref_shapes


def test_build_model_from_state_dict_equals_source():
    torch.manual_seed(0)
    source = load_clip("scratch:tiny")
    state = perturbed_state_dict(source, seed=7)
    rebuilt = build_model(state)
    assert rebuilt.config == SCRATCH_CONFIGS["tiny"]
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_input_errors():
    torch.manual_seed(0)
    model = load_clip("scratch:tiny")
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="64x64"):
        model.encode_image(torch.zeros(1, 3, 32, 32))


def test_key_padding_mask_equals_dropping_the_padded_positions():
    """A non-causal block with padded keys gives, at the real positions, what it gives on the
    sequence with the padding removed; a sample with every key masked stays finite."""
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 2).eval()
    lengths = [5, 3, 7]
    x = torch.randn(7, 3, 64)  # L x N x D
    pad = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]  # N x L, True = padding
    with torch.no_grad():
        out = block(x, key_padding_mask=pad)
        for n, length in enumerate(lengths):
            alone = block(x[:length, n:n + 1])
            torch.testing.assert_close(out[:length, n:n + 1], alone, rtol=0, atol=1e-5)
        all_masked = block(x, key_padding_mask=torch.ones(3, 7, dtype=torch.bool))
    assert torch.isfinite(all_masked).all()


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "fused"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_block_attention_equals_torch_multihead_attention(monkeypatch, explicit, causal):
    """Both CPU attention paths (explicit products for short sequences, the fused kernel for long
    ones) give what torch's own nn.MultiheadAttention gives with the same weights and masks (causal,
    padded keys, a sample with every key masked): outputs and every gradient."""
    monkeypatch.setattr(module_clip, "EXPLICIT_ATTENTION_MAX_LEN", 100 if explicit else 0)
    torch.manual_seed(0)
    mask = torch.full((9, 9), float("-inf")).triu(1) if causal else None
    block = ResidualAttentionBlock(48, 3, attn_mask=mask)
    state = perturbed_state_dict(block, seed=2)
    block.load_state_dict(state)
    reference = torch.nn.MultiheadAttention(48, 3)
    reference.load_state_dict({k[len("attn."):]: v for k, v in state.items() if k.startswith("attn.")})
    x = torch.randn(7, 4, 48)  # L x N x D
    pad = torch.arange(7)[None, :] >= torch.tensor([7, 3, 5, 0])[:, None]  # N x L; the last sample: every key
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = block.attention(x_ours, key_padding_mask=pad)
    # the reference sees what the block promises: a fully masked sample attends everywhere
    ref_pad = pad & ~pad.all(dim=1, keepdim=True)
    ref_mask = None if mask is None else mask[:7, :7].isinf()
    ref = reference(x_ref, x_ref, x_ref, need_weights=False, attn_mask=ref_mask, key_padding_mask=ref_pad)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(block.attn.get_parameter(name).grad, param.grad, rtol=1e-5, atol=1e-6)


def test_causal_block_accepts_shorter_sequences():
    torch.manual_seed(0)
    causal = torch.full((10, 10), float("-inf")).triu(1)  # OpenAI's float mask
    block = ResidualAttentionBlock(32, 1, attn_mask=causal).eval()
    x = torch.randn(6, 2, 32)
    with torch.no_grad():
        full = block(x)
        prefix = block(x[:4])
    torch.testing.assert_close(prefix, full[:4], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        block(torch.randn(11, 2, 32))


def test_grad_checkpointing_same_gradients(monkeypatch):
    torch.manual_seed(0)
    model = load_clip("scratch:tiny").train()
    image = torch.randn(2, 3, 64, 64)
    text = random_text(2, 16, eot_positions=[4, 15], seed=6)

    def grads():
        model.zero_grad()
        loss = model.encode_image(image).square().sum() + model.encode_text_tokens(text).square().sum()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    calls = []
    real_checkpoint = module_clip.checkpoint
    monkeypatch.setattr(module_clip, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(calls) == 2 + 4  # every block of both towers
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-6)
    calls.clear()
    with torch.no_grad():
        model.encode_image(image)
    assert not calls  # no checkpointing without grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_and_autocast_agree_with_fp32():
    """On the GPU: the causal mask follows .cuda(), and fp16 weights / bf16 autocast give the
    fp32 CPU directions (cosine > 0.99)."""
    torch.manual_seed(0)
    model = load_clip("scratch:tiny")
    image = torch.randn(2, 3, 64, 64)
    text = random_text(2, 16, eot_positions=[4, 15], seed=8)
    with torch.no_grad():
        want = [model.encode_image(image), model.encode_text_tokens(text).flatten(0, 1)]
        model = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            autocast = [model.encode_image(image.cuda()), model.encode_text_tokens(text.cuda()).flatten(0, 1)]
        model = model.half()
        half = [model.encode_image(image.cuda()), model.encode_text_tokens(text.cuda()).flatten(0, 1)]
    for got in autocast + half:
        assert got.is_cuda
    for got, ref in zip(autocast + half, want + want):
        cosine = torch.nn.functional.cosine_similarity(got.float().cpu(), ref, dim=-1)
        assert cosine.min() > 0.99


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quick_gelu_is_clips_function_and_keeps_one_tensor_for_backward(dtype):
    """CLIP's x * sigmoid(1.702 x), value and hand-derived gradient, with a single saved tensor (the
    formula as written keeps two: x and the sigmoid)."""
    x = torch.cat([torch.randn(500, dtype=dtype) * 3, torch.tensor([-100.0, -20.0, 0.0, 20.0, 100.0], dtype=dtype)])
    leaf = x.clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = QuickGELU()(leaf)
    sig = torch.sigmoid(1.702 * x)
    torch.testing.assert_close(y, x * sig)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(leaf.grad, g * (sig + 1.702 * x * sig * (1 - sig)))
    assert len({t.untyped_storage().data_ptr() for t in saved}) == 1
