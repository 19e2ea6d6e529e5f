"""Parameter groups (lr and weight-decay rules) and the warm-up + cosine schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from tvr.utils.optim import (WarmupCosine, build_optimizer, build_param_groups, is_no_decay,
                             warmup_cosine_schedule)


class FakeVideoColBERT(nn.Module):
    """Parameter names mimic the real model: CLIP under clip., temporal encoder, tokens, loss."""

    def __init__(self):
        super().__init__()
        clip = nn.Module()
        clip.visual = nn.Module()
        clip.visual.conv1 = nn.Conv2d(3, 8, 4, bias=False)
        clip.visual.class_embedding = nn.Parameter(torch.zeros(8))
        clip.visual.positional_embedding = nn.Parameter(torch.zeros(5, 8))
        clip.visual.ln_pre = nn.LayerNorm(8)
        clip.visual.proj = nn.Parameter(torch.zeros(8, 8))
        clip.token_embedding = nn.Embedding(10, 8)
        clip.positional_embedding = nn.Parameter(torch.zeros(7, 8))
        clip.ln_final = nn.LayerNorm(8)
        clip.text_projection = nn.Parameter(torch.zeros(8, 8))
        clip.logit_scale = nn.Parameter(torch.ones([]))
        clip.transformer = nn.Module()
        clip.transformer.resblocks = nn.ModuleList([nn.Module()])
        clip.transformer.resblocks[0].attn = nn.MultiheadAttention(8, 2)
        clip.transformer.resblocks[0].mlp = nn.Sequential()
        clip.transformer.resblocks[0].mlp.add_module("c_fc", nn.Linear(8, 16))
        self.clip = clip
        temporal = nn.Module()
        temporal.frame_position_embedding = nn.Parameter(torch.zeros(12, 8))
        temporal.expansion_tokens = nn.Parameter(torch.zeros(4, 8))
        temporal.resblocks = nn.ModuleList([nn.Module()])
        temporal.resblocks[0].attn = nn.MultiheadAttention(8, 2)
        temporal.resblocks[0].ln_1 = nn.LayerNorm(8)
        self.temporal = temporal
        self.visual_expansion_tokens = nn.Parameter(torch.zeros(4, 8))
        loss = nn.Module()
        loss.frame = nn.Module()
        loss.frame.log_temperature = nn.Parameter(torch.zeros([]))
        loss.frame.bias = nn.Parameter(torch.zeros([]))
        loss.video = nn.Module()
        loss.video.log_temperature = nn.Parameter(torch.zeros(1, 1))  # 2-D, still exempt by name
        loss.video.bias = nn.Parameter(torch.zeros(1, 1))
        self.loss = loss
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


EXPECTED = {
    "clip_decay": {
        "clip.visual.conv1.weight", "clip.visual.proj", "clip.text_projection",
        "clip.transformer.resblocks.0.attn.in_proj_weight", "clip.transformer.resblocks.0.attn.out_proj.weight",
        "clip.transformer.resblocks.0.mlp.c_fc.weight",
    },
    "clip_no_decay": {
        "clip.visual.class_embedding", "clip.visual.positional_embedding", "clip.visual.ln_pre.weight",
        "clip.visual.ln_pre.bias", "clip.token_embedding.weight", "clip.positional_embedding",
        "clip.ln_final.weight", "clip.ln_final.bias", "clip.logit_scale",
        "clip.transformer.resblocks.0.attn.in_proj_bias", "clip.transformer.resblocks.0.attn.out_proj.bias",
        "clip.transformer.resblocks.0.mlp.c_fc.bias",
    },
    "new_decay": {
        "temporal.resblocks.0.attn.in_proj_weight", "temporal.resblocks.0.attn.out_proj.weight",
    },
    "new_no_decay": {
        "temporal.frame_position_embedding", "temporal.expansion_tokens", "visual_expansion_tokens",
        "temporal.resblocks.0.attn.in_proj_bias", "temporal.resblocks.0.attn.out_proj.bias",
        "temporal.resblocks.0.ln_1.weight", "temporal.resblocks.0.ln_1.bias",
    },
    "loss": {"loss.frame.log_temperature", "loss.frame.bias", "loss.video.log_temperature", "loss.video.bias"},
}


def _names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in group["params"]}


def test_param_groups_rule_on_realistic_names():
    model = FakeVideoColBERT()
    groups = build_param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2, loss_lr=0.05)
    assert [g["name"] for g in groups] == ["clip_decay", "clip_no_decay", "new_decay", "new_no_decay", "loss"]
    for g in groups:
        assert _names(model, g) == EXPECTED[g["name"]], g["name"]
    lrs = {g["name"]: g["lr"] for g in groups}
    wds = {g["name"]: g["weight_decay"] for g in groups}
    assert lrs["clip_decay"] == lrs["clip_no_decay"] == pytest.approx(1e-7)
    assert lrs["new_decay"] == lrs["new_no_decay"] == 1e-4
    assert lrs["loss"] == 0.05  # the loss's temperatures and biases have their own rate
    assert wds == {"clip_decay": 0.2, "clip_no_decay": 0.0, "new_decay": 0.2, "new_no_decay": 0.0, "loss": 0.0}
    # Without loss_lr the loss learns at lr.
    default = {g["name"]: g["lr"] for g in build_param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)}
    assert default["loss"] == 1e-4
    # Every trainable parameter is in exactly one group; the frozen one in none.
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert id(model.frozen) not in all_ids


def test_is_no_decay_rule():
    w2 = torch.zeros(2, 2)
    assert not is_no_decay("temporal.resblocks.0.mlp.c_fc.weight", w2)
    assert is_no_decay("anything.bias", torch.zeros(2))  # ndim < 2
    assert is_no_decay("clip.token_embedding.weight", w2)
    assert is_no_decay("losses.video.scale", w2)
    assert not is_no_decay("glossary.weight", w2)  # "loss" must start a name component


def test_empty_groups_dropped_and_ddp_unwrapped():
    model = nn.Linear(3, 3)  # no CLIP parameters at all
    groups = build_param_groups(model, 1e-3, 1e-3, 0.1)
    assert [g["name"] for g in groups] == ["new_decay", "new_no_decay"]
    wrapper = nn.Module()
    wrapper.module = FakeVideoColBERT()
    groups = build_param_groups(wrapper, 1e-4, 1e-3, 0.2)
    assert _names(wrapper.module, groups[0]) == EXPECTED["clip_decay"]


def test_build_optimizer_settings_and_step():
    model = FakeVideoColBERT()
    opt = build_optimizer(build_param_groups(model, 1e-4, 1e-3, 0.2))
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-7, 1e-7, 1e-4, 1e-4, 1e-4])
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    opt.step()  # extra "name" keys in groups are accepted


def _adamw_by_hand(p, grads, lr, wd, betas=(0.9, 0.98), eps=1e-6):
    """AdamW written out (Loshchilov & Hutter, decoupled decay; bias-corrected moments)."""
    p, m, v = p.clone().double(), torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return p


@pytest.mark.parametrize("fused_available", [True, False])
def test_build_optimizer_update_is_adamw(monkeypatch, fused_available):
    """The fused kernel where torch has one for the device (torch >= 2.4 on the CPU), the plain loop
    otherwise; either way three steps move every parameter exactly as AdamW written out by hand."""
    if not fused_available:
        plain = torch.optim.AdamW

        class NoFusedKernel(plain):
            """Refuses fused=True as torch does: after the groups have taken the setting."""

            def __init__(self, params, fused=None, **kw):
                super().__init__(params, fused=fused, **kw)
                if fused:
                    raise RuntimeError("`fused=True` requires all the params to be on supported devices")

        monkeypatch.setattr(torch.optim, "AdamW", NoFusedKernel)
    torch.manual_seed(0)
    weight, bias = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(5))
    groups = [{"params": [weight], "lr": 1e-2, "weight_decay": 0.2}, {"params": [bias], "lr": 5e-3, "weight_decay": 0.0}]
    opt = build_optimizer(groups)
    torch_minor = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    fused = fused_available and torch_minor >= (2, 4)
    assert [bool(g["fused"]) for g in opt.param_groups] == [fused, fused]  # what step() reads
    # torch writes settings into the group dicts it is given; the caller's stay as they were
    assert [sorted(g) for g in groups] == [["lr", "params", "weight_decay"]] * 2
    assert not any(g["fused"] for g in build_optimizer(groups, fused=False).param_groups)
    start = {"w": weight.detach().clone(), "b": bias.detach().clone()}
    grads = {"w": [torch.randn(6, 5) for _ in range(3)], "b": [torch.randn(5) for _ in range(3)]}
    for step in range(3):
        opt.zero_grad()
        weight.grad, bias.grad = grads["w"][step].clone(), grads["b"][step].clone()
        opt.step()
    torch.testing.assert_close(weight.detach().double(), _adamw_by_hand(start["w"], grads["w"], 1e-2, 0.2),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias.detach().double(), _adamw_by_hand(start["b"], grads["b"], 5e-3, 0.0),
                               rtol=1e-5, atol=1e-6)


def test_warmup_cosine_hand_values():
    f = WarmupCosine(warmup_steps=10, total_steps=110)
    assert f(0) == 0.0
    assert f(5) == 0.5
    assert f(10) == 1.0
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine part
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))  # ~0.853553
    assert f(110) == pytest.approx(0.0)
    assert f(500) == pytest.approx(0.0)  # stays at 0 after the end
    assert WarmupCosine(0, 4)(0) == 1.0  # no warm-up: start at the full lr
    assert WarmupCosine(4, 4)(4) == 0.0
    with pytest.raises(ValueError):
        WarmupCosine(5, 4)
    with pytest.raises(ValueError):
        WarmupCosine(0, 0)


def test_scheduler_applies_to_every_group_and_resumes():
    def make():
        torch.manual_seed(0)
        model = FakeVideoColBERT()
        opt = build_optimizer(build_param_groups(model, 1e-4, 1e-3, 0.2))
        return model, opt, warmup_cosine_schedule(opt, warmup_steps=4, total_steps=20)

    def train(model, opt, sched, steps):
        for _ in range(steps):
            loss = sum((p ** 2).sum() for p in model.parameters() if p.requires_grad)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    model, opt, sched = make()
    assert [g["lr"] for g in opt.param_groups] == [0.0] * 5  # warm-up starts at 0
    train(model, opt, sched, 2)
    assert opt.param_groups[2]["lr"] == pytest.approx(1e-4 * 2 / 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-7 * 2 / 4)  # ratio kept
    train(model, opt, sched, 5)  # 7 steps taken
    # Deep copy: state dicts hold references to tensors the next steps update in place.
    state = copy.deepcopy({"opt": opt.state_dict(), "sched": sched.state_dict(), "model": model.state_dict()})
    train(model, opt, sched, 6)
    want_lr = [g["lr"] for g in opt.param_groups]
    want_w = model.temporal.resblocks[0].attn.in_proj_weight.detach().clone()

    # Resume: fresh objects, then load the state dicts saved at step 7.
    model2, opt2, sched2 = make()
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert sched2.last_epoch == 7
    train(model2, opt2, sched2, 6)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(want_lr)
    assert want_lr[2] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * (13 - 4) / 16)))
    assert torch.equal(model2.temporal.resblocks[0].attn.in_proj_weight, want_w)
    # The schedule's settings travel in the state dict.
    assert sched.state_dict()["lr_lambdas"][0] == {"warmup_steps": 4, "total_steps": 20}


def test_loss_parameters_move_at_loss_lr():
    """One AdamW step moves every parameter by about its group's lr (Adam's first step is lr * sign(grad)):
    the sigmoid loss's temperature and bias at --loss_lr, the new modules at --lr, the encoder at lr * coef_lr."""
    from tvr.models.modeling import ModelConfig, VideoColBERT
    from tvr.models.module_clip import load_clip

    torch.manual_seed(0)
    model = VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=2, temporal_layers=1))
    groups = build_param_groups(model, lr=1e-4, coef_lr=1e-2, weight_decay=0.0, loss_lr=0.05)
    opt = build_optimizer(groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    text = torch.randint(1, 1000, (4, 8))
    text[:, -1] = 49407  # EOT
    loss, _ = model(text, torch.ones(4, 8, dtype=torch.long), torch.randn(4, 2, 3, 64, 64), torch.ones(4, 2, dtype=torch.long))
    loss.backward()
    opt.step()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    for branch in ("frame", "video"):
        assert step[f"loss.losses.{branch}.bias"] == pytest.approx(0.05, rel=1e-3)
        assert step[f"loss.losses.{branch}.log_temperature"] == pytest.approx(0.05, rel=1e-3)
    assert step["temporal.expansion_tokens"] == pytest.approx(1e-4, rel=1e-2)
    assert step["clip.text_projection"] == pytest.approx(1e-6, rel=5e-2)  # fp32 rounding at |w| ~ 0.1


def test_fused_adamw_follows_the_grad_scaler_like_the_plain_loop():
    """The fp16 path of the training loop (scale, backward, unscale_ for clipping, scaler.step) gives the
    fused kernel gradients that are already unscaled; it must move the weights exactly as the plain loop."""
    torch.manual_seed(0)
    start, x = torch.randn(4, 4), torch.randn(4)
    moved = []
    for fused in (True, False):
        p = nn.Parameter(start.clone())
        opt = build_optimizer([{"params": [p], "lr": 1e-2, "weight_decay": 0.2}], fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for _ in range(3):
            opt.zero_grad()
            scaler.scale((p @ x).pow(2).sum()).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            scaler.step(opt)
            scaler.update()
        moved.append(p.detach())
    assert not torch.equal(moved[0], start)
    torch.testing.assert_close(moved[0], moved[1], rtol=1e-6, atol=1e-7)
