"""Gathers with gradient: a 2-process gloo DDP run on the CPU must produce the gradients of the
same global batch in one process."""

import os
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tvr.models.losses import RetrievalLoss
from tvr.models.similarity import mean_max_sim
from tvr.utils import distributed as du
from tvr.utils.launch import cleanup_distributed
from .spawn import free_port, run_spawned

WORLD = 2
B, LQ, LV, DIN, D = 6, 4, 5, 6, 8  # global batch 6 -> 3 pairs per rank
CONFIGS = [("sigmoid", True), ("sigmoid", False), ("softmax", True), ("softmax", False)]
TIMEOUT_S = 120


class TinyRetrievalModel(nn.Module):
    """Two encoders producing token sets (a text side and two video branches) plus the loss:
    the same data flow as the real model, under the same DDP rules."""

    def __init__(self, loss: str, dual: bool):
        super().__init__()
        self.text = nn.Linear(DIN, D)
        self.frame = nn.Linear(DIN, D)
        self.video = nn.Linear(DIN, D)
        self.loss_fn = RetrievalLoss(loss, dual=dual, branches=("frame", "video"),
                                     init_log_temperature=1.0, init_bias=-2.0, init_logit_scale=2.5)

    def forward(self, text, text_mask, vid, vid_mask):
        q = F.normalize(self.text(text), dim=-1)  # b x Lq x D
        f = F.normalize(self.frame(vid), dim=-1)  # b x Lv x D
        v = F.normalize(torch.tanh(self.video(vid)), dim=-1)  # b x Lv x D
        offset = du.get_rank() * q.shape[0]  # equal shards
        f_all, v_all = du.all_gather_with_grad(f), du.all_gather_with_grad(v)  # B x Lv x D
        vid_mask_all = du.all_gather_no_grad(vid_mask)
        scores = {"frame": mean_max_sim(q, text_mask, f_all, vid_mask_all),  # b x B
                  "video": mean_max_sim(q, text_mask, v_all, vid_mask_all)}
        scores_v2t = None
        if self.loss_fn.loss == "softmax":
            q_all = du.all_gather_with_grad(q)  # B x Lq x D
            text_mask_all = du.all_gather_no_grad(text_mask)
            scores_v2t = {"frame": mean_max_sim(q_all, text_mask_all, f, vid_mask).t(),  # b x B
                          "video": mean_max_sim(q_all, text_mask_all, v, vid_mask).t()}
        loss, _ = self.loss_fn(scores, row_offset=offset, scores_v2t=scores_v2t)
        return loss


def make_batch():
    g = torch.Generator().manual_seed(1234)
    text = torch.randn(B, LQ, DIN, generator=g, dtype=torch.float64)
    vid = torch.randn(B, LV, DIN, generator=g, dtype=torch.float64)
    text_mask = (torch.rand(B, LQ, generator=g) > 0.3).long()
    vid_mask = (torch.rand(B, LV, generator=g) > 0.3).long()
    text_mask[:, 0] = 1
    vid_mask[:, 0] = 1
    return text, text_mask, vid, vid_mask


def build(loss, dual):
    torch.manual_seed(0)
    return TinyRetrievalModel(loss, dual).double()


def grads_of(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank, port, out_dir, batch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    b = B // WORLD
    local = [t[rank * b:(rank + 1) * b] for t in batch]
    results = {"rank": du.get_rank(), "world": du.get_world_size(), "dist": du.is_distributed()}
    for loss, dual in CONFIGS:
        model = build(loss, dual)
        ddp = DDP(model)
        value = ddp(*local)
        value.backward()
        results[(loss, dual)] = {"loss": value.detach(), "grads": grads_of(model)}

    # Uneven shards: rank 0 holds 2 rows, rank 1 holds 3.
    g = torch.Generator().manual_seed(7)
    full = torch.randn(5, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 3, generator=g, dtype=torch.float64)
    mine = full[:2] if rank == 0 else full[2:]
    x = mine.clone().requires_grad_()
    gathered = du.all_gather_with_grad(x)
    ((gathered * weight).sum() * (rank + 1)).backward()  # rank r's loss weighs by r + 1
    results["uneven"] = {"gathered": gathered.detach(), "no_grad": du.all_gather_no_grad(mine),
                         "grad": x.grad.detach(), "full": full, "weight": weight}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup_distributed()  # the library's teardown: a barrier first, and only after success


def _run_workers(out_dir, batch):
    run_spawned(_worker, (free_port(), str(out_dir), batch), WORLD, TIMEOUT_S)


def test_single_process_helpers_are_no_ops():
    assert not du.is_distributed()
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert du.all_gather_with_grad(x) is x
    y = du.all_gather_no_grad(x)
    assert torch.equal(y, x) and not y.requires_grad
    assert du.gather_sizes(3) == [3]


@pytest.mark.slow
def test_two_process_gloo_gradients_equal_single_process(tmp_path):
    batch = make_batch()
    _run_workers(tmp_path, batch)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world"] == WORLD and res["dist"]

    for loss, dual in CONFIGS:
        ref_model = build(loss, dual)
        ref_loss = ref_model(*batch)  # one process, global batch, row offset 0
        ref_loss.backward()
        ref_grads = grads_of(ref_model)
        assert any(k.startswith("loss_fn.") for k in ref_grads)
        # The global loss is the mean of the per-rank (local-row) losses.
        mean_loss = sum(res[(loss, dual)]["loss"] for res in ranks) / WORLD
        torch.testing.assert_close(mean_loss, ref_loss.detach(), rtol=1e-10, atol=1e-12)
        for res in ranks:
            grads = res[(loss, dual)]["grads"]
            assert set(grads) == set(ref_grads)
            for name, ref in ref_grads.items():
                assert ref.abs().sum() > 0, name
                torch.testing.assert_close(grads[name], ref, rtol=1e-6, atol=1e-10,
                                           msg=lambda m: f"{loss} dual={dual} {name}: {m}")

    for r, res in enumerate(ranks):
        u = res["uneven"]
        torch.testing.assert_close(u["gathered"], u["full"], rtol=0, atol=0)
        torch.testing.assert_close(u["no_grad"], u["full"], rtol=0, atol=0)
        # d/dx_r of sum over ranks s of (s + 1) * <gathered, weight> = (1 + 2) * weight[rows of r]
        rows = slice(0, 2) if r == 0 else slice(2, 5)
        torch.testing.assert_close(u["grad"], 3 * u["weight"][rows], rtol=1e-12, atol=0)


def test_the_process_group_backend_follows_the_device(monkeypatch):
    """nccl reduces CUDA tensors only, so a CPU run launched on a GPU machine must get gloo; the GPU
    machine is simulated (CUDA reported available, the process group and set_device recorded)."""
    from tvr.utils import launch

    calls = []
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch.torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(launch.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(launch.dist, "init_process_group", lambda backend: calls.append(("backend", backend)))
    monkeypatch.setattr(launch.dist, "get_rank", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")

    cpu = launch.setup_distributed(0, "cpu")
    assert calls == [("backend", "gloo")] and cpu.device == torch.device("cpu") and cpu.local_rank == 1
    calls.clear()
    for device in ("auto", "cuda"):
        gpu = launch.setup_distributed(0, device)
        assert calls == [("set_device", 1), ("backend", "nccl")] and gpu.device == torch.device("cuda", 1)
        calls.clear()
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        launch.setup_distributed(0, "cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_it_names_the_flag():
    from tvr.utils import launch

    with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
        launch.setup_distributed(0, "cuda")


def test_teardown_waits_for_every_rank_first(monkeypatch):
    from tvr.utils import launch

    calls = []
    monkeypatch.setattr(launch.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(launch.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(launch.dist, "destroy_process_group", lambda: calls.append("destroy"))
    launch.cleanup_distributed()
    assert calls == ["barrier", "destroy"]


def test_a_failed_run_does_not_tear_the_process_group_down(monkeypatch, tmp_path):
    """After an error the other ranks may be inside a collective: a teardown would wait for them forever."""
    import main as main_module

    calls = []
    monkeypatch.setattr(main_module, "cleanup_distributed", lambda: calls.append("teardown"))
    with pytest.raises(FileNotFoundError):
        main_module.main(["--do_eval", "1", "--anno_path", str(tmp_path / "missing"), "--video_path", str(tmp_path),
                          "--output_dir", str(tmp_path / "out"), "--base_encoder", "scratch:tiny"])
    assert calls == []
