"""Benchmark `mean_max_sim`: time against a bare matmul of the same FLOPs, and working memory
as the number of videos grows.

    python bench/bench_similarity.py --nt 1000 --nv 1000                # time (default sizes)
    python bench/bench_similarity.py --nt 100 --nv 1000,5000,10000,20000  # memory scan
    python bench/bench_similarity.py --device cuda --nt 1000 --nv 1000,5000,10000,20000

Sizes follow the paper: Lq = 32 query tokens, Lv = 26 vectors per video (the paper's SigLIP
setting), D = 512, L2-normalised float32 inputs. All query
tokens are valid (query expansion on); `--short_frac` of the videos have a random number of
padded tokens so the masking path is exercised.

Time (evaluation path: torch.no_grad; `--clock cpu` counts process CPU time instead of wall
time). The floor is a bare matmul of the same FLOPs with nothing else, into one preallocated
buffer, timed two ways: "same blocks" runs exactly the GEMMs that MMS runs (its query-token x
video-token blocks, chunk by chunk); "large blocks" runs the same FLOPs as blocks of
CUDA_CHUNK_ELEMENTS similarities (the largest GEMMs MMS would ever run), so small blocks cannot
flatter the ratio. ratio = mms / the faster of the two. Each
is timed `--repeats` times, interleaved; we report the minimum of each and the median of the
per-round ratios (rounds share the machine's load, so the paired median resists a busy,
shared machine better than either minimum).

Memory. The reported figure is the WORKING memory of one call: peak during the call minus
what was allocated before it (the inputs) minus the Nt x Nv output, which grow with Nv by
definition. On CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (exact,
allocator-level). On CPU: torch has no allocator statistics, so we read the process's
resident-set high-water mark (VmHWM in /proc/self/status), reset just before the call by
writing "5" to /proc/self/clear_refs (Linux >= 4.0), against the resident size (VmRSS) before
it. Page granularity and malloc's retention make the CPU figure approximate (a few MiB); it is
compared with the expected size of one similarity block, T x (Lv * c) floats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvr.models.similarity import (  # noqa: E402
    CUDA_CHUNK_ELEMENTS,
    default_chunk_elements,
    mean_max_sim,
    resolve_chunk_sizes,
)

MIB = 1024 ** 2


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Working-memory meter for one call (see the module docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kib("VmHWM") * 1024
        self.delta = self.peak - self.base
        return False


def make_inputs(nt, nv, lq, lv, d, short_frac, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(nt, lq, d, generator=g), dim=-1).to(device, dtype)
    v = torch.nn.functional.normalize(torch.randn(nv, lv, d, generator=g), dim=-1).to(device, dtype)
    q_mask = torch.ones(nt, lq, dtype=torch.bool, device=device)
    lengths = torch.full((nv,), lv)
    short = torch.rand(nv, generator=g) < short_frac
    lengths[short] = torch.randint(1, lv, (int(short.sum()),), generator=g)
    v_mask = (torch.arange(lv)[None, :] < lengths[:, None]).to(device)
    return q, q_mask, v, v_mask


def bare_matmul(q, v, c, qc, buf):
    """GEMMs of qc texts x c videos over the whole matrix into one reused buffer, nothing else."""
    nt, lq, d = q.shape
    nv, lv, _ = v.shape
    qf = q.reshape(nt * lq, d)
    vf = v.reshape(nv * lv, d)
    for j in range(0, nv, c):
        vj = vf[j * lv:min(j + c, nv) * lv]
        for i in range(0, nt, qc):
            qi = qf[i * lq:min(i + qc, nt) * lq]
            torch.mm(qi, vj.t(), out=buf[:qi.shape[0] * vj.shape[0]].view(qi.shape[0], vj.shape[0]))


def _timed(fn, device, clock="wall"):
    """Seconds of one call: wall clock, or this process's CPU time (--clock cpu: with --threads 1 on
    a shared machine it does not count the time other processes held the core)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = now()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - t0


def run_one(nt, nv, args, device, dtype):
    q, q_mask, v, v_mask = make_inputs(nt, nv, args.lq, args.lv, args.dim, args.short_frac, device, dtype)
    max_elements = args.max_chunk_elements or default_chunk_elements(device)
    c, qc = resolve_chunk_sizes(nt, args.lq, nv, args.lv, args.chunk_size, args.q_chunk_size, max_elements)
    c_big, qc_big = resolve_chunk_sizes(nt, args.lq, nv, args.lv, None, None, CUDA_CHUNK_ELEMENTS)
    block_bytes = qc * args.lq * args.lv * c * q.element_size()
    out_bytes = nt * nv * q.element_size()
    call = lambda: mean_max_sim(q, q_mask, v, v_mask, chunk_size=c, q_chunk_size=qc)  # noqa: E731

    with torch.no_grad():
        # Warm-up on one chunk, so one-off library initialisation (BLAS buffers, CUDA context,
        # kernels) is not counted as working memory.
        mean_max_sim(q, q_mask, v[:c], v_mask[:c], chunk_size=c, q_chunk_size=qc)
        with PeakMemory(device) as mem:
            out = call()
        del out
        times = {"mms": [], "same": [], "large": []}
        if args.repeats > 0:
            buf = torch.empty(max(qc * args.lq * c * args.lv, qc_big * args.lq * c_big * args.lv), device=device, dtype=dtype)
            fns = {
                "mms": call,
                "same": lambda: bare_matmul(q, v, c, qc, buf),
                "large": lambda: bare_matmul(q, v, c_big, qc_big, buf),
            }
            for fn in fns.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    times[name].append(_timed(fn, device, args.clock))
            del buf
    nan = float("nan")
    t_mms = min(times["mms"], default=nan)
    t_same, t_large = min(times["same"], default=nan), min(times["large"], default=nan)
    floor = [min(a, b) for a, b in zip(times["same"], times["large"])]
    paired = sorted(m / f for m, f in zip(times["mms"], floor))
    flops = 2.0 * nt * args.lq * nv * args.lv * args.dim
    row = {
        "nt": nt, "nv": nv, "chunk_size": c, "q_chunk_size": qc,
        "mms_s": t_mms, "bare_same_blocks_s": t_same, "bare_large_blocks_s": t_large,
        "ratio": t_mms / min(t_same, t_large),
        "ratio_paired_median": paired[len(paired) // 2] if paired else nan,
        "gflops_mms": flops / t_mms / 1e9,
        "inputs_mib": (q.numel() + v.numel()) * q.element_size() / MIB,
        "output_mib": out_bytes / MIB,
        "working_mib": (mem.delta - out_bytes) / MIB,
        "block_mib": block_bytes / MIB,
        "times_s": times,
    }
    del q, v, q_mask, v_mask
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nt", type=int, default=1000, help="number of texts (queries)")
    p.add_argument("--nv", type=str, default="1000", help="comma-separated numbers of videos, e.g. 1000,20000")
    p.add_argument("--lq", type=int, default=32)
    p.add_argument("--lv", type=int, default=26)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk_size", type=int, default=None, help="videos per chunk (default: automatic)")
    p.add_argument("--q_chunk_size", type=int, default=None, help="texts per chunk (default: automatic)")
    p.add_argument("--max_chunk_elements", type=int, default=None,
                   help="similarity-block budget for automatic chunks (default: the library's for the device)")
    p.add_argument("--short_frac", type=float, default=0.25, help="fraction of videos with padded tokens")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (0: memory only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock, or process CPU time (CPU only; use with --threads 1 on a shared machine)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.device.startswith("cuda"):
        p.error("--clock cpu measures CPU work; on CUDA use --clock wall")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    nvs = [int(x) for x in args.nv.split(",") if x]

    header = (f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads) dtype={args.dtype} torch={torch.__version__} "
              f"Lq={args.lq} Lv={args.lv} D={args.dim} repeats={args.repeats} clock={args.clock}")
    print(header)
    print(f"{'Nt':>6} {'Nv':>6} {'chunk':>6} {'qchunk':>6} {'mms s':>9} {'same s':>9} {'large s':>9} {'ratio':>6} "
          f"{'paired':>6} {'GFLOP/s':>8} {'in MiB':>8} {'out MiB':>8} {'work MiB':>9} {'block MiB':>9}")
    rows = []
    for nv in nvs:
        r = run_one(args.nt, nv, args, device, dtype)
        rows.append(r)
        print(f"{r['nt']:>6} {r['nv']:>6} {r['chunk_size']:>6} {r['q_chunk_size']:>6} {r['mms_s']:>9.3f} "
              f"{r['bare_same_blocks_s']:>9.3f} {r['bare_large_blocks_s']:>9.3f} {r['ratio']:>6.2f} "
              f"{r['ratio_paired_median']:>6.2f} {r['gflops_mms']:>8.1f} {r['inputs_mib']:>8.1f} "
              f"{r['output_mib']:>8.1f} {r['working_mib']:>9.1f} {r['block_mib']:>9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
