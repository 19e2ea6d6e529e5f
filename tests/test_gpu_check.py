"""The GPU check script (bench/gpu_check.sh): its figures are read correctly from main.py's logs, and
the whole script runs end to end, so that GPU time, when a machine has one, is not lost to a broken
step. On a machine without CUDA the script runs as a CPU dry run (DEVICE=cpu)."""
import importlib.util
import json
import os
import subprocess

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.sh")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "bench", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


# ---- samples/s from the training log -----------------------------------------------------------

def step_line(epoch, step, total, samples_per_s, peak_mb=100):
    """A step line as main.py logs it (rates with more digits than the log, so the test is exact)."""
    return (f"2026-01-01 00:00:00 INFO tvr.engine.train: epoch {epoch} step {step}/{total} loss 1.0000 "
            f"lr 1.00e-04 loss_frame 0.5 | {samples_per_s:.6f} samples/s, peak mem {peak_mb} MB, ETA 1.0 min\n")


def epoch_lines(epoch, first_step, logged, total, batch, startup_s, step_s, peak_mb=100):
    """Step lines of one epoch whose clock started at ``first_step``: the n-th step since then ends
    ``startup_s + n * step_s`` seconds after the start; the logged rate is cumulative, as main.py's."""
    lines = []
    for step in logged:
        n = step - first_step
        lines.append(step_line(epoch, step, total, n * batch / (startup_s + n * step_s), peak_mb))
    return lines


def test_steady_rate_from_a_two_epoch_log_and_a_resumed_run(tmp_path):
    # 8 steps per epoch, a line every 2 steps, global batch 10. Epoch 1: 0.5 s per step after 3 s of
    # start-up, so the steady rate is 10 / 0.5 = 20 samples/s; the cumulative rates are all lower.
    log = ["... INFO tvr.engine.trainer: 80 training pairs, 8 steps per epoch, 16 steps in all\n"]
    log += epoch_lines(0, 0, [2, 4, 6, 8], 16, batch=10, startup_s=5, step_s=1.0)
    log += epoch_lines(1, 8, [10, 12, 14, 16], 16, batch=10, startup_s=3, step_s=0.5, peak_mb=300)
    path = tmp_path / "log.txt"
    path.write_text("".join(log))
    fresh = gpu_check.parse_train_log(str(path))
    assert fresh["steps_logged"] == 8
    assert fresh["samples_per_s_second_half"] == pytest.approx(20.0, rel=1e-6)
    assert fresh["samples_per_s_cumulative"] == pytest.approx(8 * 10 / (3 + 8 * 0.5), rel=1e-6)
    assert fresh["peak_mem_mb"] == 300

    # The same log, then a run resumed at global step 11 (inside epoch 1), whose clock starts there:
    # 0.25 s per step after 2 s, a steady 40 samples/s.
    log += ["... INFO tvr.engine.trainer: 80 training pairs, 8 steps per epoch, 16 steps in all\n",
            "... INFO tvr.engine.trainer: resumed from run/last.pth at epoch 1, step 11\n"]
    log += epoch_lines(1, 11, [12, 13, 14, 15, 16], 16, batch=10, startup_s=2, step_s=0.25)
    path.write_text("".join(log))
    resumed = gpu_check.parse_train_log(str(path))
    assert resumed["steps_logged"] == 13
    assert resumed["samples_per_s_second_half"] == pytest.approx(40.0, rel=1e-6)


def test_a_log_without_step_lines_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("... INFO tvr.engine.trainer: 80 training pairs, 8 steps per epoch, 16 steps in all\n")
    with pytest.raises(ValueError, match="log.txt: no training step lines"):
        gpu_check.parse_train_log(str(path))


# ---- score agreement between precisions ---------------------------------------------------------

def test_compare_scores_against_hand_computed_figures():
    ref = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    near = ref + torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    out = gpu_check.compare_scores(near, ref)
    std = (0.8) ** 0.5  # sample standard deviation of 1, 2, 3, 3, 2, 1
    assert out["max_abs_diff"] == pytest.approx(0.5)
    assert out["max_abs_diff_over_std"] == pytest.approx(0.5 / std)
    assert out["top1_agreement"] == 1.0 and out["mean_spearman"] == pytest.approx(1.0)
    assert out["nonfinite_mismatch"] == 0

    reversed_ = gpu_check.compare_scores(-ref, ref)
    assert reversed_["top1_agreement"] == 0.0 and reversed_["mean_spearman"] == pytest.approx(-1.0)

    # a padded (-inf) entry in one matrix but not the other is counted, and left out of the differences
    masked = ref.clone()
    masked[0, 0] = float("-inf")
    out = gpu_check.compare_scores(masked, ref)
    assert out["nonfinite_mismatch"] == 1 and out["max_abs_diff"] == 0.0


def test_collect_keeps_figures_status_and_output_apart(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "autocast.json").write_text('{"fp16": 1}')
    (parts / "autocast.txt").write_text("printed by the step")
    (parts / "status_autocast.json").write_text('{"rc": 0, "seconds": 3}')
    (parts / "broken.json").write_text("{")
    assert gpu_check.main(["collect", "--parts", str(parts), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["autocast"] == {"fp16": 1}
    assert result["status"]["autocast"] == {"rc": 0, "seconds": 3}
    assert result["output_tail"]["autocast"] == "printed by the step"
    assert "unreadable JSON" in result["broken"]["error"]


# ---- the script end to end ----------------------------------------------------------------------

TINY = {"NUM_TRAIN": "8", "NUM_TEST": "4", "BATCH_SIZE": "4", "MAX_FRAMES": "2", "WORKERS": "0",
        "ENCODER": "scratch:tiny", "SIM_NT": "8", "SIM_NV": "8,16", "EVAL_SIZES": "8x8", "OMP_NUM_THREADS": "1"}


def run_script(out_dir, **env):
    full_env = {**os.environ, **TINY, **env}
    return subprocess.run(["bash", SCRIPT, str(out_dir)], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_script_stops_at_once_and_writes_nothing(tmp_path):
    proc = run_script(tmp_path / "out")
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "DEVICE=cpu" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step_and_gathers_their_figures(tmp_path):
    out = tmp_path / "out"
    proc = run_script(out, DEVICE="cpu", NGPU="2", PYTEST_PATHS="tests/test_metrics.py")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert set(result["status"]) == {"pytest_gpu", "synthetic_data", "autocast", "similarity", "similarity_bf16",
                                     "eval_tokens",
                                     "search_index", "search_query",
                                     *(f"{kind}_{run}" for kind in ("run", "train")
                                       for run in ("1gpu", "1gpu_gradckpt", "2gpu", "2gpu_gradckpt"))}
    assert all(s["rc"] == 0 for s in result["status"].values())
    assert "1 skipped" in result["output_tail"]["pytest_gpu"]  # the GPU-only test, selected and skipped here
    # 8 videos x 3 captions / batch 4 = 6 steps, a line every 2 steps
    for run in ("1gpu", "1gpu_gradckpt", "2gpu", "2gpu_gradckpt"):
        assert result[f"train_{run}"]["steps_logged"] == 3
        assert result[f"train_{run}"]["samples_per_s_second_half"] > 0
        assert result[f"train_{run}"]["peak_mem_mb"] > 0
    # no autocast on the CPU: every precision gives the fp32 scores exactly
    for precision in ("fp16", "bf16"):
        figures = result["autocast"]["precisions"][precision]
        assert figures["max_abs_diff"] == 0.0 and figures["top1_agreement"] == 1.0
    assert [row["nv"] for row in result["similarity_fp32"]["rows"]] == [8, 16]
    assert [row["nv"] for row in result["similarity_bf16"]["rows"]] == [8, 16]
    # the index of the 12 synthetic videos, built by 2 processes, answers the query with 3 hits
    assert "12 videos (12 encoded now" in result["output_tail"]["search_index"]
    answer = [line for line in result["output_tail"]["search_query"].splitlines() if line.startswith("{")]
    assert len(json.loads(answer[-1])["results"]) == 3

    # A second run into the same folder keeps the first result under a time stamp; a failing step is
    # recorded, the steps after it still run, and the script exits 1.
    proc = run_script(out, DEVICE="cpu", NGPU="1", ENCODER="scratch:no-such-encoder", SKIP="pytest similarity eval search")
    assert proc.returncode == 1
    kept = [name for name in os.listdir(out) if name.startswith("gpu_check.") and name != "gpu_check.json"]
    assert len(kept) == 1 and json.loads((out / kept[0]).read_text())["status"] == result["status"]
    failed = json.loads((out / "gpu_check.json").read_text())
    assert failed["status"]["run_1gpu"]["rc"] != 0 and "no-such-encoder" in failed["output_tail"]["run_1gpu"]
    assert "train_1gpu" not in failed["status"]  # the log is read only after a run that succeeded
    assert "failed steps: run_1gpu run_1gpu_gradckpt autocast" in proc.stderr
