"""The real model under 2-process DDP (gloo, CPU) gets exactly the gradients of one process on the
same global batch, for both losses and both --dual_loss settings, and takes the same optimizer step.

Everything runs in float64 (LayerNorm's float32 upcast is bypassed for the test), so any difference
above ~1e-12 is a real one, e.g. a loss scaled by the number of processes or a gather whose backward
drops or double-counts the other ranks' gradient. The end-to-end float32 comparison lives in
test_e2e.py.
"""
import os
from datetime import timedelta

import pytest
import torch
from torch import nn

from tvr.models import module_clip
from tvr.models.modeling import ModelConfig, VideoColBERT
from tvr.models.module_clip import load_clip
from tvr.models.tokenization_clip import tokenize
from tvr.utils.launch import cleanup_distributed
from tvr.utils.optim import build_optimizer, build_param_groups
from .spawn import free_port, run_spawned

WORLD, BATCH, FRAMES, WORDS = 2, 4, 3, 8  # 2 pairs per rank
CONFIGS = [("sigmoid", True), ("sigmoid", False), ("softmax", True), ("softmax", False)]
STEP_LOSSES = ("sigmoid", "softmax")
TIMEOUT_S = 300
CAPTIONS = ["red then blue", "a green square", "yellow circle moves left", "white then grey then orange"]


def use_float64_layer_norm():
    """module_clip.LayerNorm computes in float32 whatever the input; in float64 let it keep the dtype."""
    module_clip.LayerNorm.forward = nn.LayerNorm.forward


def build(loss: str, dual: bool) -> VideoColBERT:
    torch.manual_seed(0)
    return VideoColBERT(load_clip("scratch:tiny"), ModelConfig(max_frames=FRAMES, loss=loss, dual_loss=dual)).double().train()


def make_batch():
    g = torch.Generator().manual_seed(5)
    ids, mask = tokenize(CAPTIONS, WORDS)
    video = torch.randn(BATCH, FRAMES, 3, 64, 64, generator=g, dtype=torch.float64)
    video_mask = torch.ones(BATCH, FRAMES, dtype=torch.long)
    video_mask[1, 2:] = 0  # padded frames on both ranks
    video_mask[2, 1:] = 0
    return ids, mask, video, video_mask


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step(model, net, batch):
    """One training step as the trainer takes it: AdamW groups, clip to norm 1, step."""
    optimizer = build_optimizer(build_param_groups(model, 1e-3, 1.0, 0.2))
    loss, _ = net(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    use_float64_layer_norm()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    b = BATCH // WORLD
    local = [t[rank * b:(rank + 1) * b] for t in make_batch()]
    results = {}
    for loss, dual in CONFIGS:
        model = build(loss, dual)
        ddp = DDP(model)  # kept alive until backward: its hooks average the gradients
        value, _ = ddp(*local)
        value.backward()
        results[(loss, dual)] = {"loss": value.detach(), "grads": grads_of(model)}
    for loss in STEP_LOSSES:
        model = build(loss, True)
        results[("step", loss)] = one_step(model, DDP(model), local)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup_distributed()  # the library's teardown: a barrier first, and only after success


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_grads")
    run_spawned(_worker, (free_port(), str(out)), WORLD, TIMEOUT_S)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture
def float64_layer_norm(monkeypatch):
    monkeypatch.setattr(module_clip.LayerNorm, "forward", nn.LayerNorm.forward)


@pytest.mark.slow
@pytest.mark.parametrize("loss,dual", CONFIGS)
def test_gradients_equal_one_process_on_the_global_batch(two_process_results, float64_layer_norm, loss, dual):
    model = build(loss, dual)
    value, _ = model(*make_batch())
    value.backward()
    expected = grads_of(model)
    assert any(n.startswith("loss.") for n in expected) and any(n.startswith("temporal.") for n in expected)
    # Each rank's loss is its local rows' share: their mean is the one-process loss.
    mean = sum(r[(loss, dual)]["loss"] for r in two_process_results) / WORLD
    torch.testing.assert_close(mean, value.detach(), rtol=1e-12, atol=1e-12)
    for rank, res in enumerate(two_process_results):
        grads = res[(loss, dual)]["grads"]
        assert grads.keys() == expected.keys()
        for name, ref in expected.items():
            assert ref.abs().max() > 0, name
            # float64: measured differences are ~1e-15; a factor 2 (loss x world size) is far outside.
            torch.testing.assert_close(grads[name], ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()),
                                       msg=lambda m: f"rank {rank} {loss} dual={dual} {name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("loss", STEP_LOSSES)
def test_one_optimizer_step_equals_one_process(two_process_results, float64_layer_norm, loss):
    model = build(loss, True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = one_step(model, model, make_batch())
    moved = max((expected[n] - before[n]).abs().max() for n in before)
    assert moved > 1e-4  # the step is real (AdamW's first step moves weights by about the lr)
    for rank, res in enumerate(two_process_results):
        weights = res[("step", loss)]
        for name, ref in expected.items():
            torch.testing.assert_close(weights[name], ref, rtol=0, atol=1e-12, msg=lambda m: f"rank {rank} {name}: {m}")
