"""End to end: main.py trains and evaluates on a small synthetic set; resume and multi-process
runs reproduce the one-process, uninterrupted results. (That training learns at all, and that
best.pth is the best epoch, is test_learning.py's job.)"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import main as main_module
from tvr.dataloaders.synthetic import main as synthetic_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic_main(["--output_dir", str(root), "--num_train", "32", "--num_test", "8", "--seed", "3"])
    return root


def common_args(dataset, output_dir, *extra):
    return [
        "--anno_path", str(dataset / "anns"), "--video_path", str(dataset / "videos"),
        "--base_encoder", "scratch:tiny", "--output_dir", str(output_dir),
        "--max_words", "16", "--max_frames", "4", "--video_framerate", "1",
        "--batch_size", "16", "--batch_size_val", "8", "--workers", "0", "--n_display", "1",
        "--epochs", "2", "--lr", "1e-3", "--coef_lr", "1", "--checkpoint_every", "2", "--seed", "7",
        *extra,
    ]


def final_weights(output_dir):
    return torch.load(os.path.join(output_dir, "last.pth"), weights_only=True)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory):
    """One uninterrupted one-process run: train 2 epochs, then evaluate."""
    out = tmp_path_factory.mktemp("reference")
    results = main_module.main(common_args(dataset, out, "--do_train", "--do_eval", "--keep_epochs", "2"))
    return out, results


def test_train_and_eval_writes_everything(reference_run):
    out, results = reference_run
    for name in ("log.txt", "config.json", "eval_results.json", "epoch0.pth", "epoch1.pth", "best.pth", "last.pth"):
        assert (out / name).exists(), name
    saved = json.loads((out / "eval_results.json").read_text())
    assert {"t2v", "v2t", "temporal"} <= set(saved)  # the synthetic set marks its temporal queries
    assert saved["checkpoint"] == os.path.abspath(out / "best.pth")  # after training, the best epoch is tested
    assert 0 <= saved["temporal"]["twin_accuracy"] <= 100
    for direction in ("t2v", "v2t"):
        assert set(saved[direction]) == {"R1", "R5", "R10", "MdR", "MnR"}
        assert saved[direction]["R1"] == pytest.approx(results[direction]["R1"])
        assert 1 <= saved[direction]["MdR"] <= 8 and 0 <= saved[direction]["R1"] <= 100
    log = (out / "log.txt").read_text()
    assert "base_encoder: scratch:tiny" in log and "batch_size: 16" in log  # effective arguments
    assert "samples/s" in log and "ETA" in log and "temperature_frame" in log
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["state"]["epoch"] == 2 and last["state"]["global_step"] == 12  # 96 pairs / 16 x 2 epochs
    assert {"optimizer", "scheduler", "rng"} <= set(last)


class Interrupted(Exception):
    pass


def test_resume_after_a_crash_matches_the_uninterrupted_run(dataset, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    steps = {"n": 0}
    real_step = torch.optim.AdamW.step

    def crashing_step(self, *a, **k):
        steps["n"] += 1
        if steps["n"] == 10:  # in the middle of the second epoch, after last.pth at step 8
            raise Interrupted()
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(Interrupted):
        main_module.main(common_args(dataset, out, "--do_train", "--do_eval"))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert torch.load(out / "last.pth", weights_only=True)["state"]["global_step"] == 8

    results = main_module.main(common_args(dataset, out, "--do_train", "--do_eval", "--resume"))
    ref_out, ref_results = reference_run
    assert_same_weights(final_weights(out), final_weights(ref_out))
    assert results == ref_results
    assert "resumed from" in (out / "log.txt").read_text()

    # Resuming with flags that change the run is refused, naming them; the checkpoint is untouched.
    before = (out / "last.pth").read_bytes()
    with pytest.raises(ValueError, match=r"--batch_size 16 in the checkpoint, 8 now"):
        main_module.main(common_args(dataset, out, "--do_train", "--resume", "--batch_size", "8"))
    assert (out / "last.pth").read_bytes() == before


def test_resume_after_sigkill_matches_the_uninterrupted_run(dataset, reference_run, tmp_path):
    """A real kill: SIGKILL as soon as the first last.pth lands, then --resume."""
    out = tmp_path / "killed"
    args = common_args(dataset, out, "--do_train", "--do_eval")
    proc = subprocess.Popen([sys.executable, "main.py"] + args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while not (out / "last.pth").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out / "last.pth", weights_only=True)["state"]["global_step"] < 12

    results = main_module.main(args + ["--resume"])
    ref_out, ref_results = reference_run
    assert_same_weights(final_weights(out), final_weights(ref_out), atol=1e-6)
    for direction in ("t2v", "v2t"):
        assert results[direction] == pytest.approx(ref_results[direction])


def _launch(args, nproc, launcher):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    if launcher == "launch":
        with socket.socket() as s:  # the old launcher needs a concrete free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.launch", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(cmd + ["main.py"] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.slow
def test_two_process_eval_equals_one_process(dataset, reference_run, tmp_path):
    """torch.distributed.launch (the old launcher: --local-rank) with gloo on the CPU."""
    ref_out, _ = reference_run
    single = main_module.main(common_args(dataset, tmp_path / "one", "--do_eval", "--init_model", str(ref_out / "best.pth")))
    _launch(common_args(dataset, tmp_path / "two", "--do_eval", "--init_model", str(ref_out / "best.pth")), 2, "launch")
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    for key in ("t2v", "v2t", "temporal"):
        assert two[key] == pytest.approx(one[key], abs=1e-9), key
    assert two["t2v"]["R1"] == pytest.approx(single["t2v"]["R1"])


# Float noise of this run: starting the one-process run from weights perturbed by 1e-7 (relative,
# one float32 rounding) moves its final weights by 3.3e-6 (1e-6: by 2.0e-5), so runs that differ only
# in summation order differ by about that much (2 processes vs 1, measured: 3.4e-6). A real error in
# the 2-process gradients shows far more clearly in float64 (test_ddp_gradients.py), and Adam's step
# hides an error of scale, which only that test sees.
DDP_WEIGHT_ATOL = 2e-5


@pytest.mark.slow
def test_two_process_training_matches_one_process(dataset, reference_run, tmp_path):
    """torchrun, 2 ranks x 8 rows: all-gathered negatives and DDP averaging give the same weights
    as one process with the whole batch of 16, up to float noise."""
    ref_out, _ = reference_run
    _launch(common_args(dataset, tmp_path / "ddp", "--do_train"), 2, "torchrun")
    two, one = final_weights(tmp_path / "ddp"), final_weights(ref_out)
    assert_same_weights(two, one, atol=DDP_WEIGHT_ATOL)
    moved = torch.load(ref_out / "epoch0.pth", weights_only=True)["model"]
    assert max(float((one[k] - moved[k]).abs().max()) for k in one) > 20 * DDP_WEIGHT_ATOL  # the runs did train (1.5e-3)


def test_batch_that_does_not_divide_across_ranks_is_an_error():
    from tvr.utils.sampling import GlobalBatchSampler

    with pytest.raises(ValueError, match="--batch_size 15 does not divide across 2 processes"):
        GlobalBatchSampler(100, 15, 0, 2, seed=0)


def test_help_shows_every_default():
    proc = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--do_train", "--batch_size", "--coef_lr", "--interaction", "--visual_expansion", "--dsl", "--local_rank"):
        assert flag in proc.stdout
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "GLOBAL training batch (split across ranks) (default: 128)" in text
    assert "lr * coef_lr (default: 0.001)" in text


def test_local_rank_flag_and_environment(monkeypatch):
    from tvr.options import parse_args

    base = ["--do_eval", "--anno_path", "a", "--video_path", "v"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert parse_args(base + ["--local-rank=3"]).local_rank == 3
    assert parse_args(base + ["--local_rank", "2"]).local_rank == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert parse_args(base + ["--local-rank=3"]).local_rank == 1


def test_undecodable_videos_are_reported_not_hidden(dataset, reference_run, tmp_path):
    """Training replaces the sample and counts it; evaluation stops, or with
    --allow_decode_errors scores the video as never retrieved and lists it."""
    import shutil

    from tvr.dataloaders import VideoDecodeError

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    test_video = json.loads((data / "anns" / "temporal_queries.json").read_text())["video_ids"][0]
    train_video = (data / "anns" / "MSRVTT_train.9k.csv").read_text().split()[1]

    def corrupt(vid):
        (path,) = (data / "videos").glob(f"{vid}.*")
        path.write_bytes(b"not a video at all" * 100)

    corrupt(train_video)
    out = tmp_path / "train"
    main_module.main(common_args(data, out, "--do_train", "--epochs", "1"))
    assert "samples were replaced because their video failed to decode" in (out / "log.txt").read_text()

    corrupt(test_video)

    ckpt = str(reference_run[0] / "best.pth")
    with pytest.raises(VideoDecodeError, match=f"{test_video}\\."):
        main_module.main(common_args(data, tmp_path / "strict", "--do_eval", "--init_model", ckpt))
    results = main_module.main(common_args(data, tmp_path / "lenient", "--do_eval", "--init_model", ckpt, "--allow_decode_errors", "1"))
    saved = json.loads((tmp_path / "lenient" / "eval_results.json").read_text())
    assert saved["failed_videos"] == [test_video] == results["failed_videos"]
