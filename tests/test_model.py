"""VideoColBERT model: wiring of CLIP, temporal encoder, expansion and scoring.

Expectations are computed independently from CLIP's own encode_text / encode_image and a naive
loop MeanMaxSim, never from the model's scoring code.
"""
import torch
import torch.nn.functional as F
import pytest

from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import load_clip
from tvr.models.tokenization_clip import tokenize

from .test_temporal_reference import reference_video_tokens

CAPTIONS = ["a red circle moves left", "a blue square appears then a green triangle"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("scratch:tiny").eval()


def make_model(clip, **overrides):
    torch.manual_seed(1)
    return VideoColBERT(clip, ModelConfig(max_frames=4, **overrides)).eval()


def make_video(batch=2, frames=4, real=(3, 4), resolution=64, seed=2):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, resolution, resolution, generator=g)
    mask = torch.zeros(batch, frames, dtype=torch.long)
    for i, n in enumerate(real):
        mask[i, :n] = 1
    return video, mask


def naive_mms(q, qm, v, vm):
    """Loop reference: mean over real query tokens of the max over real video tokens."""
    out = torch.empty(q.shape[0], v.shape[0], dtype=q.dtype)
    for a in range(q.shape[0]):
        for b in range(v.shape[0]):
            maxima = [max(float(q[a, i] @ v[b, j]) for j in range(v.shape[1]) if vm[b, j]) for i in range(q.shape[1]) if qm[a, i]]
            out[a, b] = sum(maxima) / len(maxima)
    return out


def test_temporal_encoder_starts_as_clip_text_blocks(clip):
    model = make_model(clip)
    assert len(model.temporal.transformer.resblocks) == 4
    for block, source in zip(model.temporal.transformer.resblocks, clip.transformer.resblocks):
        for (name, p), (_, ref) in zip(block.state_dict().items(), source.state_dict().items()):
            torch.testing.assert_close(p, ref, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(model.temporal.frame_position_embedding, clip.positional_embedding[:4], rtol=0, atol=0)


def test_frame_branch_is_mms_over_clip_outputs(clip):
    model = make_model(clip, branches=("frame",), query_expansion=False)
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    with torch.no_grad():
        score = model.similarity(model.encode_text(ids, mask), model.encode_video(video, vmask))
        q = F.normalize(clip.encode_text_tokens(ids), dim=-1)
        f = F.normalize(clip.encode_image(video.flatten(0, 1)), dim=-1).view(2, 4, -1)
    torch.testing.assert_close(score, naive_mms(q, mask, f, vmask), rtol=1e-5, atol=1e-5)


def test_padded_frames_change_nothing(clip):
    """A video with 3 real frames scores the same whatever its padded 4th slot holds, and the same as
    the 3 frames given without any padding slot (so the padding is masked in the temporal encoder
    too, not only kept out of the frame branch)."""
    model = make_model(clip)
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    other = video.clone()
    other[0, 3] = torch.randn_like(other[0, 3]) * 100  # padded slot of video 0 gets garbage
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        a = model.similarity(text, model.encode_video(video, vmask))
        b = model.similarity(text, model.encode_video(other, vmask))
        unpadded = model.similarity(text, model.encode_video(video[:1, :3], vmask[:1, :3]))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[:, :1], unpadded, rtol=0, atol=1e-5)


def test_query_expansion_off_ignores_padding(clip):
    """Without expansion a padded query scores exactly like the same query with no padding at all
    (the causal text encoder leaves the real positions untouched by what follows them)."""
    video, vmask = make_video()
    caption = [CAPTIONS[0]]
    long_ids, long_mask = tokenize(caption, 24)
    short_ids, short_mask = tokenize(caption, int(long_mask.sum()))  # SOT..EOT, no padding
    assert short_mask.all() and long_mask.sum() < 24
    with torch.no_grad():
        off = make_model(clip, query_expansion=False)
        videos = off.encode_video(video, vmask)
        s_short = off.similarity(off.encode_text(short_ids, short_mask), videos)
        s_long = off.similarity(off.encode_text(long_ids, long_mask), videos)
        on = make_model(clip, query_expansion=True)
        s_long_on = on.similarity(on.encode_text(long_ids, long_mask), on.encode_video(video, vmask))
    torch.testing.assert_close(s_short, s_long, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(s_long, s_long_on, atol=1e-4)


@pytest.mark.parametrize("query_expansion, meanp", [(False, False), (True, False), (True, True)])
def test_text_tower_reads_padding_only_when_a_query_token_sits_there(clip, monkeypatch, query_expansion, meanp):
    """Without query expansion (or for the mean-pooling baseline, which reads only EOT) the text tower
    runs only as far as the batch's longest text; the loss and every gradient are those of running it
    over all positions. With expansion the padded positions are query tokens: all are encoded."""
    ids, mask = tokenize(CAPTIONS, 24)
    longest = int(mask.sum(1).max())
    assert longest < 24
    video, vmask = make_video()
    lengths = []
    encode = clip.encode_text_tokens
    monkeypatch.setattr(clip, "encode_text_tokens", lambda text: lengths.append(text.shape[1]) or encode(text))

    def loss_and_grads(skippable):
        monkeypatch.setattr(clip, "text_padding_skippable", skippable)
        model = make_model(clip, query_expansion=query_expansion, meanp=meanp, loss="softmax").train()
        model.zero_grad()
        loss, _ = model(ids, mask, video, vmask)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(True)
    assert lengths == [24 if query_expansion and not meanp else longest]
    full_loss, full_grads = loss_and_grads(False)
    assert lengths[1:] == [24]
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys() and "clip.token_embedding.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_score_is_sum_of_branches(clip):
    """s = MMS(q, frames) + MMS(q, video tokens), every token computed outside the model's code:
    query tokens from CLIP's text tower (all positions, query expansion), frame tokens from CLIP's
    image tower, video tokens from the hand-written temporal reference over the normalised frames."""
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    with torch.no_grad():
        both = make_model(clip)
        text, videos = both.encode_text(ids, mask), both.encode_video(video, vmask)
        scores = both.branch_scores(text, videos)
        total = both.similarity(text, videos)
        q = F.normalize(clip.encode_text_tokens(ids), dim=-1)  # B x L x D
        f = F.normalize(clip.encode_image(video.flatten(0, 1)), dim=-1).view(2, 4, -1)  # B x T x D
        v = F.normalize(reference_video_tokens(both.temporal.state_dict(), f, vmask, heads=128 // 64), dim=-1).float()
    vm = torch.cat([vmask, torch.ones(2, 2, dtype=torch.long)], dim=1)  # two visual expansion tokens, never masked
    assert torch.equal(videos["video"].mask.long(), vm)
    qm = torch.ones_like(mask)  # query expansion: padded positions are query tokens too
    torch.testing.assert_close(total, naive_mms(q, qm, f, vmask) + naive_mms(q, qm, v, vm), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, scores["frame"] + scores["video"])


def test_maxsim_sums_instead_of_mean(clip):
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    with torch.no_grad():
        mms = make_model(clip, query_expansion=False)
        maxsim = make_model(clip, query_expansion=False, interaction="maxsim")
        a = mms.branch_scores(mms.encode_text(ids, mask), mms.encode_video(video, vmask))
        b = maxsim.branch_scores(maxsim.encode_text(ids, mask), maxsim.encode_video(video, vmask))
    n_tokens = mask.sum(1, keepdim=True).float()
    for name in a:
        torch.testing.assert_close(b[name], a[name] * n_tokens, rtol=1e-5, atol=1e-5)


def test_meanp_baseline_is_cosine_of_eot_and_mean_frame(clip):
    model = make_model(clip, meanp=True)
    assert model.temporal is None
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    with torch.no_grad():
        score = model.similarity(model.encode_text(ids, mask), model.encode_video(video, vmask))
        t = F.normalize(clip.encode_text(ids), dim=-1)
        frames = F.normalize(clip.encode_image(video.flatten(0, 1)), dim=-1).view(2, 4, -1)
        means = torch.stack([frames[i, : int(vmask[i].sum())].mean(0) for i in range(2)])
    torch.testing.assert_close(score, t @ F.normalize(means, dim=-1).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_one_backward_reaches_every_part(clip, loss):
    model = make_model(load_clip("scratch:tiny"), loss=loss).train()
    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    total, stats = model(ids, mask, video, vmask)
    total.backward()
    expect_grad = [
        "temporal.expansion_tokens",
        "temporal.frame_position_embedding",
        "temporal.transformer.resblocks.0.attn.in_proj_weight",
        "temporal.transformer.resblocks.3.mlp.c_proj.weight",
        "clip.visual.conv1.weight",
        "clip.visual.proj",
        "clip.token_embedding.weight",
        "clip.text_projection",
        "clip.transformer.resblocks.0.attn.in_proj_weight",
    ]
    params = dict(model.named_parameters())
    loss_params = [n for n in params if n.startswith("loss.")]
    assert loss_params, "the loss must own learnable temperature / bias parameters"
    for name in expect_grad + loss_params:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {name}"
    assert torch.isfinite(total) and stats


def test_grad_checkpointing_recomputes_every_block_and_keeps_the_gradients(clip):
    """Checkpointing is applied (each transformer block of the image, text and temporal towers runs
    its forward again during backward) and changes no gradient."""
    import re

    ids, mask = tokenize(CAPTIONS, 16)
    video, vmask = make_video()
    grads = []
    for checkpointing in (False, True):
        model = make_model(load_clip("scratch:tiny"), loss="sigmoid").train()
        model.load_state_dict(make_model(clip).state_dict())  # identical weights both times
        model.set_grad_checkpointing(checkpointing)
        calls = {}
        blocks = {n: m for n, m in model.named_modules() if re.search(r"resblocks\.\d+$", n)}
        assert {n.split(".resblocks")[0] for n in blocks} == {"clip.visual.transformer", "clip.transformer", "temporal.transformer"}
        for name, block in blocks.items():
            # a pre-hook: a recomputation may stop early, before a forward hook would run
            block.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        loss, _ = model(ids, mask, video, vmask)
        in_forward = dict(calls)
        loss.backward()
        in_backward = {n: calls.get(n, 0) - in_forward.get(n, 0) for n in blocks}
        assert in_forward == {n: 1 for n in blocks}  # every block ran once in the forward pass
        assert in_backward == {n: int(checkpointing) for n in blocks}, in_backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


AUTOCAST_CAPTIONS = CAPTIONS + ["a yellow triangle moves up", "a green circle then a red square", "a blue circle",
                                 "a red triangle moves down", "a yellow square moves right then stops", "nothing moves"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# bf16 autocast emulated on the CPU: max error 2.3 % of the spread (fp16 keeps 3 more mantissa bits)
@pytest.mark.parametrize("dtype,fraction", [(torch.float16, 0.05), (torch.bfloat16, 0.1)])
def test_autocast_scores_match_fp32_on_cuda(clip, dtype, fraction):
    """Scores under autocast stay within a small fraction of the spread of the fp32 scores, and every
    pair of videos whose fp32 scores differ by more than twice that keeps its order. (A random model's
    scores lie within a few hundredths of each other, so an absolute tolerance says nothing.)"""
    model = make_model(clip).cuda()
    n = len(AUTOCAST_CAPTIONS)
    ids, mask = tokenize(AUTOCAST_CAPTIONS, 16)
    video, vmask = make_video(batch=n, real=(4, 3, 2, 4, 1, 4, 3, 4), seed=5)
    ids, mask, video, vmask = ids.cuda(), mask.cuda(), video.cuda(), vmask.cuda()
    with torch.no_grad():
        ref = model.similarity(model.encode_text(ids, mask), model.encode_video(video, vmask))
        with torch.autocast("cuda", dtype=dtype):
            text, videos = model.encode_text(ids, mask), model.encode_video(video, vmask)
        low = model.similarity(text, videos).float()
    spread = float(ref.max() - ref.min())
    assert spread > 1e-3
    tol = fraction * spread
    assert float((low - ref).abs().max()) <= tol, ((low - ref).abs().max(), spread)
    gap = ref.unsqueeze(2) - ref.unsqueeze(1)  # n x n x n: row r, video i minus video j
    clear = gap > 2 * tol
    assert clear.any()
    assert bool(((low.unsqueeze(2) - low.unsqueeze(1))[clear] > 0).all())
