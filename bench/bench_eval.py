"""Benchmark evaluation at scale: the time of each stage of `evaluate()` and the scoring's memory.

    python bench/bench_eval.py tokens --sizes 1000x1000,10000x10000      # pre-made tokens
    python bench/bench_eval.py tokens --sizes 1000x1000,1000x10000 --repeats 1  # memory vs Nv
    torchrun --nproc_per_node 2 bench/bench_eval.py tokens --sizes 1000x1000  # with real gathers
    python bench/bench_eval.py real --num_test 1000                        # whole pipeline, scratch:tiny

`tokens` runs the real `evaluate()` (sharding, gathers, `VideoColBERT.similarity`, metrics) with
the two encoders replaced by a lookup into pre-made, L2-normalised token tensors of the ViT-B/32
recipe's shape: 32 query tokens (query expansion: all valid), 12 frame tokens and 12 + 2 video
tokens per video, D = 512, a quarter of the videos shorter (padded frames). That is how a
10k x 10k evaluation runs on a machine that cannot encode 10k real videos; "encode" stages then
time the lookup only. The scoring's working memory (peak during `model.similarity` minus what
was allocated before it minus its Nq x Nv output) is measured as in bench_similarity.py.

`real` runs `main.py --do_eval 1` on a synthetic test split of `--num_test` videos with an
untrained `scratch:tiny` model (decoding, transforms, both encoders, everything), and reads the
stage times `evaluate()` logs to log.txt.

Times are wall-clock seconds of one run (`--repeats` keeps the fastest); on a shared machine they
are indicative only, and `process_cpu` (the CPU seconds of the whole evaluate() call, all threads)
says how much of the wall time was this process's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import torch
from torch.utils.data import Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_similarity import MIB, PeakMemory  # noqa: E402
from tvr.engine.evaluate import evaluate  # noqa: E402
from tvr.engine.model_io import build_model  # noqa: E402
from tvr.models.modeling import ModelConfig, TokenSet  # noqa: E402
from tvr.utils.launch import cleanup_distributed, setup_distributed  # noqa: E402

STAGES = ("encode_texts", "encode_videos", "gather_videos", "score", "gather_scores", "metrics")


class _Indices(Dataset):
    """Item i is just i: the lookup 'encoders' below turn a batch of indices into pre-made tokens."""

    def __init__(self, n: int, kind: str):
        self.n, self.kind = n, kind

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        idx = torch.tensor(i)
        if self.kind == "text":
            return {"text_ids": idx, "text_mask": idx}
        return {"video": idx, "video_mask": idx, "failed": torch.tensor(False)}


class _EvalData:
    def __init__(self, nq: int, nv: int):
        self.texts = _Indices(nq, "text")
        self.videos = _Indices(nv, "video")
        self.query_to_video = [i * nv // nq for i in range(nq)]  # several captions per video when nq > nv
        self.video_ids = [f"video{i}" for i in range(nv)]


def premade_tokens(nq, nv, lq, frames, expansion, dim, seed=0):
    """L2-normalised query, frame and video tokens; a quarter of the videos have 1..frames-1 frames."""
    g = torch.Generator().manual_seed(seed)
    norm = torch.nn.functional.normalize
    text = TokenSet(norm(torch.randn(nq, lq, dim, generator=g), dim=-1), torch.ones(nq, lq, dtype=torch.long))
    lengths = torch.full((nv,), frames)
    short = torch.rand(nv, generator=g) < 0.25
    lengths[short] = torch.randint(1, frames, (int(short.sum()),), generator=g)
    frame_mask = (torch.arange(frames)[None, :] < lengths[:, None]).long()  # Nv x T
    video_mask = torch.cat([frame_mask, torch.ones(nv, expansion, dtype=torch.long)], dim=1)  # Nv x (T+N)
    frame = TokenSet(norm(torch.randn(nv, frames, dim, generator=g), dim=-1), frame_mask)
    video = TokenSet(norm(torch.randn(nv, frames + expansion, dim, generator=g), dim=-1), video_mask)
    return text, {"frame": frame, "video": video}


def lookup_model(text: TokenSet, videos, sim_chunk_size, device, score_memory: list):
    """scratch:tiny VideoColBERT whose encoders look up pre-made tokens; scoring is the real method,
    wrapped to measure its working memory."""
    model = build_model(ModelConfig(base_encoder="scratch:tiny", sim_chunk_size=sim_chunk_size or None), load_weights=False)
    model = model.to(device)
    text = TokenSet(text.tokens.to(device), text.mask.to(device))
    videos = {k: TokenSet(v.tokens.to(device), v.mask.to(device)) for k, v in videos.items()}
    model.encode_text = lambda ids, mask: TokenSet(text.tokens[ids], text.mask[ids])
    model.encode_video = lambda ids, mask: {k: TokenSet(v.tokens[ids], v.mask[ids]) for k, v in videos.items()}
    similarity = model.similarity

    def measured_similarity(t, v):
        with PeakMemory(device) as mem:
            out = similarity(t, v)
        score_memory.append((mem.delta - out.numel() * out.element_size()) / MIB)
        return out

    model.similarity = measured_similarity
    return model


def run_tokens(args, runtime) -> list:
    rows = []
    for size in args.sizes.split(","):
        nq, nv = (int(x) for x in size.lower().split("x"))
        text, videos = premade_tokens(nq, nv, args.lq, args.frames, args.expansion, args.dim)
        inputs_mib = (text.tokens.numel() + sum(v.tokens.numel() for v in videos.values())) * 4 / MIB
        best, memory = None, []
        for _ in range(max(1, args.repeats)):
            score_memory: list = []
            model = lookup_model(text, videos, args.sim_chunk_size, runtime.device, score_memory)
            timings: dict = {}
            start, cpu_start = time.perf_counter(), time.process_time()
            results, _ = evaluate(model, _EvalData(nq, nv), runtime, args.batch_size_val, workers=0, timings=timings)
            timings["total"] = time.perf_counter() - start
            timings["process_cpu"] = time.process_time() - cpu_start  # all threads; wall on a busy machine is more
            memory.extend(score_memory)
            if best is None or timings["total"] < best["total"]:
                best = timings
        row = {"nq": nq, "nv": nv, "world_size": runtime.world_size, "sim_chunk_size": args.sim_chunk_size,
               "inputs_mib": inputs_mib, "output_mib": nq * nv * 4 / MIB / runtime.world_size,
               "score_working_mib": max(memory), "seconds": best}
        if runtime.is_main:
            row["t2v_R1_random"] = results["t2v"]["R1"]
        rows.append(row)
        if runtime.is_main:
            print_row(row)
        del text, videos
    return rows


def run_real(args) -> list:
    import main as main_module
    from tvr.dataloaders.synthetic import main as synthetic_main

    root = args.data_dir or tempfile.mkdtemp(prefix="bench_eval_")
    if not os.path.exists(os.path.join(root, "anns", "MSRVTT_data.json")):
        t0 = time.perf_counter()
        synthetic_main(["--output_dir", root, "--num_train", "4", "--num_test", str(args.num_test), "--seed", "0"])
        print(f"generated {args.num_test} synthetic test videos in {time.perf_counter() - t0:.1f} s under {root}")
    out = os.path.join(root, f"eval_{int(time.time())}")
    argv = ["--do_eval", "1", "--anno_path", os.path.join(root, "anns"), "--video_path", os.path.join(root, "videos"),
            "--base_encoder", "scratch:tiny", "--output_dir", out, "--batch_size_val", str(args.batch_size_val),
            "--workers", str(args.workers), "--max_frames", str(args.frames), "--max_words", str(args.lq)]
    start = time.perf_counter()
    main_module.main(argv)
    total = time.perf_counter() - start
    with open(os.path.join(out, "log.txt")) as f:
        line = [ln for ln in f if "seconds per stage" in ln][-1]
    m = re.search(r"evaluation of (\d+) texts x (\d+) videos, seconds per stage: (.*)$", line.strip())
    seconds = {k: float(v) for k, v in (part.rsplit(" ", 1) for part in m.group(3).split(", "))}
    seconds["main_total"] = total
    row = {"nq": int(m.group(1)), "nv": int(m.group(2)), "world_size": 1, "mode": "real scratch:tiny",
           "workers": args.workers, "seconds": seconds}
    print_row(row)
    return [row]


def print_row(row):
    s = row["seconds"]
    stages = " ".join(f"{k}={s[k]:.2f}" for k in list(STAGES) + ["total", "process_cpu", "main_total"] if k in s)
    extra = f" score_working_MiB={row['score_working_mib']:.0f} inputs_MiB={row['inputs_mib']:.0f}" if "score_working_mib" in row else ""
    print(f"Nq={row['nq']} Nv={row['nv']} ranks={row['world_size']} {stages}{extra}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["tokens", "real"])
    p.add_argument("--sizes", default="1000x1000", help="tokens: comma-separated NqxNv, e.g. 1000x1000,10000x10000")
    p.add_argument("--num_test", type=int, default=1000, help="real: synthetic test videos (= queries)")
    p.add_argument("--data_dir", default=None, help="real: synthetic dataset folder (generated when missing)")
    p.add_argument("--lq", type=int, default=32, help="query tokens (--max_words)")
    p.add_argument("--frames", type=int, default=12, help="frames per video (--max_frames)")
    p.add_argument("--expansion", type=int, default=2, help="visual expansion tokens")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--sim_chunk_size", type=int, default=256, help="videos per scoring chunk (main.py's default; 0: automatic)")
    p.add_argument("--batch_size_val", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="real: loader workers")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "real":
        rows = run_real(args)
        is_main = True
    else:
        runtime = setup_distributed(int(os.environ.get("LOCAL_RANK", 0)))
        rows = run_tokens(args, runtime)
        cleanup_distributed()  # after success only (see its docstring)
        is_main = runtime.is_main
    if args.json and is_main:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
