"""Benchmark approximate search (tvr.search.ann) against exhaustive MeanMaxSim.

    python bench/bench_search.py --videos 10000,100000 --queries 100
    python bench/bench_search.py --videos 10000,100000 --queries 100 --noise_rank 0   # isotropic noise
    python bench/bench_search.py --videos 1000000 --queries 30   # large: generated and coded in shards

Corpus: tvr.search.synthetic (clustered tokens, Zipf-popular concepts, a query planted on a random
video), 12 frame tokens + 14 video tokens of 512 dims per video (26 vectors, as in the paper's
SigLIP setting), stored as float16 memory-mapped files under --work_dir like the search index
stores its tokens. --noise_rank sets how many directions the token noise spans: 48 by default
(real embeddings vary along far fewer directions than their 512 dimensions), 0 for isotropic noise,
where every token's noise is nearly orthogonal to every other's and the top 10 beyond the planted
video is decided by that noise. Per corpus size it reports:
- recall@10: |ANN top 10 & exhaustive top 10| / 10, averaged over the queries; the exhaustive top
  10 is computed once with mean_max_sim on the same float16 tokens and cached;
- query latency: median wall-clock time and median CPU time (process time, all threads) per query,
  text encoding excluded (the queries are token sets);
- index bytes per video for candidate generation (centroids, PQ codebook, centroid ids, PQ codes,
  inverted lists), and the build time (quantiser training + encoding, shard by shard);
- the planted video's hit rate in the top 10 (a sanity check of the corpus).
The machine may be shared: wall times then include waiting for a core; the CPU time does not.
Results go to stdout (one JSON object per size and search setting) and to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvr.models.similarity import mean_max_sim  # noqa: E402
from tvr.search import ann  # noqa: E402
from tvr.search.store import read_ahead  # noqa: E402
from tvr.search.synthetic import CorpusSpec, SyntheticCorpus  # noqa: E402

ARRAYS = ("frames", "frame_mask", "video", "video_mask")


def corpus_files(folder: str, n: int, spec: CorpusSpec, chunk: int = 8192):
    """Memory-mapped float16 tokens and bool masks of n videos, generated once."""
    os.makedirs(folder, exist_ok=True)
    shapes = {"frames": (n, spec.frames, spec.dim), "frame_mask": (n, spec.frames),
              "video": (n, spec.frames + spec.expansion, spec.dim), "video_mask": (n, spec.frames + spec.expansion)}
    dtypes = {"frames": np.float16, "video": np.float16, "frame_mask": np.bool_, "video_mask": np.bool_}
    done = os.path.join(folder, "complete")
    if not os.path.exists(done):
        corpus = SyntheticCorpus(spec)
        maps = {k: np.lib.format.open_memmap(os.path.join(folder, f"{k}.npy"), mode="w+", dtype=dtypes[k], shape=shapes[k])
                for k in ARRAYS}
        t0 = time.time()
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            for k, arr in zip(ARRAYS, corpus.videos(a, b)):
                maps[k][a:b] = arr
            print(f"  generated {b}/{n} videos ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        for m in maps.values():
            m.flush()
        del maps
        open(done, "w").close()
    return {k: np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r") for k in ARRAYS}


def fetch_fn(arrays):
    def fetch(vids: np.ndarray):
        order = np.argsort(vids)  # sorted reads are kinder to the page cache
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        s = vids[order]
        out = []
        for tok, mask in (("frames", "frame_mask"), ("video", "video_mask")):
            t = torch.from_numpy(np.asarray(arrays[tok][s])[inv]).float()
            m = torch.from_numpy(np.asarray(arrays[mask][s])[inv])
            out.append(ann.TokenBatch(t, m))
        return out
    return fetch


def prefetch_fn(arrays):
    def prefetch(vids: np.ndarray):
        for name in ("frames", "video"):
            read_ahead(arrays[name], vids)
    return prefetch


def exhaustive_top(arrays, queries: torch.Tensor, k: int, chunk: int = 4096):
    """Top-k video ids per query by exact MeanMaxSim (frame + video branch), ties to the lower id."""
    n = arrays["frames"].shape[0]
    q_mask = torch.ones(queries.shape[:2], dtype=torch.bool)
    best_s = torch.full((len(queries), 0), -float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.long)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        s = sum(mean_max_sim(queries, q_mask, torch.from_numpy(np.asarray(arrays[t][a:b])).float(),
                             torch.from_numpy(np.asarray(arrays[m][a:b])))
                for t, m in (("frames", "frame_mask"), ("video", "video_mask")))
        cat_s = torch.cat([best_s, s], 1)
        cat_i = torch.cat([best_i, torch.arange(a, b).expand(len(queries), -1)], 1)
        top = cat_s.topk(min(k, cat_s.shape[1]), dim=1).indices
        best_s, best_i = cat_s.gather(1, top), cat_i.gather(1, top)
    return best_i.numpy(), best_s.numpy()


def peak_rss_gib() -> float:
    """Peak resident set, memory-mapped corpus pages included (they are file-backed and reclaimable)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


_ANON_PEAK = [0.0]


def anon_gib() -> float:
    """Resident anonymous memory now (what the process itself allocated; no file pages), tracking its
    largest value seen at the sampling points (after every build shard and every query setting)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                value = int(line.split()[1]) / 1024 ** 2
                _ANON_PEAK[0] = max(_ANON_PEAK[0], value)
                return value
    return float("nan")


def build(arrays, folder: str, cfg: ann.AnnBuildConfig, shard: int):
    """Train on a sample, encode shard by shard (each shard saved), return (index, seconds)."""
    n = arrays["frames"].shape[0]
    t0 = time.time()
    # Training sample: whole videos drawn at random, all their real tokens.
    per_video = arrays["frames"].shape[1] + arrays["video"].shape[1]
    total_tokens = int(np.asarray(arrays["frame_mask"]).sum() + np.asarray(arrays["video_mask"]).sum())
    rows = ann.sample_rows(n, max(1, ann.training_tokens(cfg, total_tokens) // per_video), cfg.seed)
    sample = np.concatenate([np.asarray(arrays["frames"][rows])[np.asarray(arrays["frame_mask"][rows])],
                             np.asarray(arrays["video"][rows])[np.asarray(arrays["video_mask"][rows])]]).astype(np.float32)
    quant = ann.train_quantizer(sample, cfg, total_tokens=total_tokens)
    t_train = time.time() - t0
    parts = []
    for a in range(0, n, shard):
        b = min(n, a + shard)
        part = ann.encode_videos(quant, np.arange(a, b), [(arrays["frames"][a:b], arrays["frame_mask"][a:b]),
                                                          (arrays["video"][a:b], arrays["video_mask"][a:b])])
        parts.append(part)
        anon_gib()
        print(f"  encoded {b}/{n} videos ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    t_build = time.time() - t0
    index = ann.AnnIndex(quant, parts, [arrays["frames"].shape[1], arrays["video"].shape[1]])
    return index, t_train, t_build


def parse_settings(text: str):
    out = []
    for item in text.split(";"):
        nprobe, cent, pq, rerank = (int(x) for x in item.split(","))
        out.append(ann.AnnSearchConfig(nprobe, cent, pq, rerank))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", default="10000,100000", help="corpus sizes, comma-separated")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--threads", default="2", help="thread counts to build and query with, comma-separated")
    p.add_argument("--work_dir", default="/tmp/bench_search")
    p.add_argument("--shard", type=int, default=20000, help="videos per build shard")
    p.add_argument("--noise_rank", type=int, default=48,
                   help="directions the corpus's token noise spans (0: isotropic, every dimension)")
    p.add_argument("--nlist", type=int, default=0)
    p.add_argument("--pq_m", type=int, default=32)
    p.add_argument("--train_tokens", type=int, default=0, help="0: the index's default (training_tokens)")
    d = ann.AnnSearchConfig()
    p.add_argument("--settings", default=f"{d.nprobe},{d.centroid_candidates},{d.pq_candidates},{d.rerank}",
                   help="search settings 'nprobe,centroid_candidates,pq_candidates,rerank', ';'-separated "
                        "(default: the search's defaults)")
    p.add_argument("--out", default=None, help="append the JSON results to this file")
    args = p.parse_args(argv)
    import faiss
    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    spec = CorpusSpec(noise_rank=args.noise_rank)
    for n in (int(x) for x in args.videos.split(",")):
        folder = os.path.join(args.work_dir, f"n{n}" + (f"_r{args.noise_rank}" if args.noise_rank else ""))
        arrays = corpus_files(folder, n, spec)
        targets = np.random.default_rng(12345).choice(n, size=args.queries, replace=False)
        queries = torch.from_numpy(SyntheticCorpus(spec).queries(targets))
        gt_path = os.path.join(folder, f"exhaustive_q{args.queries}.npz")
        if not os.path.exists(gt_path):
            t0 = time.time()
            top, _ = exhaustive_top(arrays, queries, 10)
            np.savez(gt_path, top=top, seconds=time.time() - t0)
        gt = np.load(gt_path)
        exhaustive_s = float(gt["seconds"]) / args.queries
        gt = gt["top"]
        cfg = ann.AnnBuildConfig(nlist=args.nlist, pq_m=args.pq_m, train_tokens=args.train_tokens)
        cache = os.path.join(folder, f"ann_nlist{args.nlist}_m{args.pq_m}_t{args.train_tokens}.npz")
        if os.path.exists(cache):  # built by an earlier run with the same settings: reuse it and its times
            z = np.load(cache)
            index = ann.AnnIndex(ann.Quantizer.from_arrays(z), [ann.CodedVideos(z["vids"], z["lists"], z["codes"])],
                                 [spec.frames, spec.frames + spec.expansion])
            t_train, t_build, build_rss = float(z["train_s"]), float(z["build_s"]), float(z["build_rss"])
        else:
            torch.set_num_threads(max(threads))
            faiss.omp_set_num_threads(max(threads))
            index, t_train, t_build = build(arrays, folder, cfg, args.shard)
            build_rss = peak_rss_gib()
            anon_gib()
            np.savez(cache, **index.quantizer.arrays(), vids=index.vids,
                     lists=index.lists, codes=index.codes, train_s=t_train, build_s=t_build, build_rss=build_rss)
        fetch, prefetch = fetch_fn(arrays), prefetch_fn(arrays)
        q_mask = torch.ones(queries.shape[1], dtype=torch.bool)
        for nthreads, setting in [(t, s) for t in threads for s in parse_settings(args.settings)]:
            torch.set_num_threads(nthreads)
            faiss.omp_set_num_threads(nthreads)
            index.search(fetch, queries[0], q_mask, 10, setting, prefetch=prefetch)  # warm-up
            recall, planted, wall, cpu, cands = [], [], [], [], []
            for i in range(len(queries)):
                w0, c0 = time.perf_counter(), time.process_time()
                res = index.search(fetch, queries[i], q_mask, 10, setting, prefetch=prefetch)
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
                recall.append(len(set(res.vids.tolist()) & set(gt[i].tolist())) / 10)
                planted.append(float(targets[i] in set(res.vids.tolist())))
                cands.append(res.num_candidates)
            result = {
                "videos": n, "queries": args.queries, "threads": nthreads, "noise_rank": args.noise_rank,
                "nlist": index.quantizer.nlist, "pq_m": index.quantizer.m,
                "setting": vars(setting),
                "recall_at_10": float(np.mean(recall)),
                "planted_in_top10_ann": float(np.mean(planted)),
                "planted_in_top10_exhaustive": float(np.mean([targets[i] in set(gt[i].tolist()) for i in range(len(gt))])),
                "median_latency_ms": 1e3 * float(np.median(wall)),
                "median_cpu_ms": 1e3 * float(np.median(cpu)),
                "median_candidates": float(np.median(cands)),
                "exhaustive_s_per_query": exhaustive_s,
                "index_bytes_per_video": index.nbytes() / n,
                "train_s": t_train, "build_s": t_build,
                "build_peak_rss_gib": build_rss, "peak_rss_gib": peak_rss_gib(),
                "anon_now_gib": anon_gib(), "anon_peak_sampled_gib": _ANON_PEAK[0],
                "load_average": os.getloadavg()[0],
            }
            print(json.dumps(result), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
