"""Atomic checkpoint writes, safe loads, RNG state round trips, weight loading."""

import argparse
import logging
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import tvr.utils.checkpoint as ckpt
from tvr.utils.checkpoint import (CheckpointError, atomic_save, extract_state_dict, load_checkpoint,
                                  load_model_weights, rng_state, set_rng_state)


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "sub" / "last.pth"
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "step": 120}
    atomic_save(obj, str(path))
    assert sorted(os.listdir(path.parent)) == ["last.pth"]  # no temporary left behind
    back = load_checkpoint(str(path))
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], obj["model"]["w"])


def test_atomic_save_failure_keeps_old_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"version": 1}, str(path))

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")  # simulate a write that dies halfway
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"version": 2}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["last.pth"]
    assert load_checkpoint(str(path)) == {"version": 1}

    # A first save that fails leaves nothing under the final name.
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        atomic_save({"x": 1}, str(tmp_path / "new.pth"))
    assert not (tmp_path / "new.pth").exists()
    assert os.listdir(tmp_path) == ["last.pth"]


def test_atomic_save_interrupted_keeps_old_file(tmp_path, monkeypatch):
    # KeyboardInterrupt (Ctrl-C / SIGINT) is not an Exception; the temporary must still go.
    path = tmp_path / "best.pth"
    atomic_save({"v": 1}, str(path))

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"xx")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": 2}, str(path))
    assert os.listdir(tmp_path) == ["best.pth"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(missing))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth: it is not a PyTorch checkpoint"):
        load_checkpoint(str(garbage))

    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.randn(100)}, str(truncated))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: it is a truncated or corrupt torch file"):
        load_checkpoint(str(truncated))

    # weights_only refuses arbitrary pickled objects (e.g. an argparse Namespace saved by old code).
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, str(pickled))
    with pytest.raises(CheckpointError, match=r"pickled.pth: it holds a pickled Python object \(argparse.Namespace\)") as err:
        load_checkpoint(str(pickled))
    # The message says what the file is; it never suggests switching the protection off.
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None

    # A TorchScript archive (what OpenAI's CLIP download is) is named as such.
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(scripted))
    with pytest.raises(CheckpointError, match="scripted.pt: it is a TorchScript archive"):
        load_checkpoint(str(scripted))


def test_a_torchscript_archive_is_refused_before_torch_load_sees_it(tmp_path, monkeypatch):
    """torch 2.3's torch.load hands a TorchScript archive to torch.jit.load even with weights_only=True
    (and returns a module); so the archive is recognised first, whatever the torch version does."""
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(scripted))
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: pytest.fail("torch.load saw the TorchScript archive"))
    with pytest.raises(CheckpointError, match="scripted.pt: it is a TorchScript archive"):
        load_checkpoint(str(scripted))


@pytest.mark.parametrize("message", [
    "Weights only load failed. WeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not an allowed global",
    "Weights only load failed. WeightsUnpickler error: Unsupported class argparse.Namespace",  # torch 2.3
])
def test_the_refused_class_is_named_in_either_torch_wording(tmp_path, message):
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, str(pickled))
    described = ckpt.describe_unreadable(str(pickled), RuntimeError(message))
    assert described.startswith("it holds a pickled Python object (argparse.Namespace)")


def _draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist())


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in Python's generator
    np.random.randn()  # (numpy caches the second value of a pair)
    state = rng_state()
    want = _draw()

    path = tmp_path / "rng.pth"
    atomic_save({"rng": state}, str(path))
    loaded = torch.load(str(path), weights_only=True)["rng"]  # plain weights_only load must work

    _draw()  # move every generator on
    set_rng_state(loaded)
    assert _draw() == want


def test_rng_state_cuda_entry():
    state = rng_state()
    if torch.cuda.is_available():
        assert len(state["cuda"]) == torch.cuda.device_count()
    else:
        assert state["cuda"] == []


class Tiny(nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.lin = nn.Linear(3, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.register_buffer("steps", torch.zeros(()))


def test_load_model_weights_strips_module_prefix_and_reports(caplog):
    src = Tiny()
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.extra.weight"] = torch.zeros(2)
    del sd["module.norm.bias"]
    dst = Tiny()
    with caplog.at_level(logging.WARNING, logger="tvr.utils.checkpoint"):
        missing, unexpected = load_model_weights(dst, sd)
    assert missing == ["norm.bias"] and unexpected == ["extra.weight"]
    assert torch.equal(dst.lin.weight, src.lin.weight)
    assert "norm.bias" in caplog.text and "extra.weight" in caplog.text

    with pytest.raises(CheckpointError, match="norm.bias"):
        load_model_weights(Tiny(), sd, strict=True)
    # Exact match under strict: fine; a DDP-like wrapper with .module is unwrapped.
    wrapper = nn.Module()
    wrapper.module = Tiny()
    assert load_model_weights(wrapper, src.state_dict(), strict=True) == ([], [])
    assert torch.equal(wrapper.module.lin.bias, src.lin.bias)


def test_load_model_weights_shape_mismatch_names_keys_and_shapes():
    dst = Tiny(hidden=4)
    before = dst.lin.weight.clone()
    with pytest.raises(CheckpointError) as err:
        load_model_weights(dst, Tiny(hidden=5).state_dict())
    msg = str(err.value)
    assert "lin.weight: checkpoint (5, 3) vs model (4, 3)" in msg
    assert "norm.weight: checkpoint (5,) vs model (4,)" in msg
    assert torch.equal(dst.lin.weight, before)  # nothing half-loaded


def test_extract_state_dict():
    sd = Tiny().state_dict()
    assert extract_state_dict(sd).keys() == sd.keys()
    assert extract_state_dict({"model": sd, "epoch": 1}).keys() == sd.keys()
    assert extract_state_dict({"state_dict": sd}).keys() == sd.keys()
    with pytest.raises(CheckpointError, match="epoch"):
        extract_state_dict({"epoch": 1})


def test_module_exports():
    for name in ckpt.__all__:
        assert hasattr(ckpt, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip(tmp_path):
    torch.cuda.manual_seed_all(5)
    path = tmp_path / "rng.pth"
    atomic_save(rng_state(), str(path))
    want = torch.rand(4, device="cuda").tolist()
    torch.rand(4, device="cuda")
    set_rng_state(load_checkpoint(str(path)))
    assert torch.rand(4, device="cuda").tolist() == want
