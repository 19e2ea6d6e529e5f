"""Command line: build an index of your videos with a trained model, then search it.

    python -m tvr.search index --checkpoint CK --videos DIR --out INDEX [--workers N] [--batch_size N] [--ann]
    torchrun --nproc_per_node N -m tvr.search index ...        (each process encodes its share)
    python -m tvr.search query --index INDEX "a red circle moves left" [--top 10] [--json] [--explain OUT.png]
    python -m tvr.search query --index INDEX --queries FILE [--ann]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..options import _bool
from ..utils.launch import end_process
from .ann_config import AnnBuildConfig, AnnSearchConfig

logger = logging.getLogger("tvr.search")


def _index_parser(sub) -> None:
    p = sub.add_parser("index", help="encode every video under a folder into an index (resumable, incremental)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained checkpoint (best.pth / last.pth / epochN.pth)")
    p.add_argument("--videos", required=True, help="folder of videos, searched recursively")
    p.add_argument("--out", required=True, help="index folder (created, or updated when it exists)")
    p.add_argument("--workers", type=int, default=2, help="video-decoding processes per encoding process")
    p.add_argument("--batch_size", type=int, default=8, help="videos per forward pass")
    p.add_argument("--shard_size", type=int, default=256, help="videos per shard file (the unit kept after a crash)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: CUDA when available (each process on its local GPU)")
    g = p.add_argument_group("approximate search")
    g.add_argument("--ann", type=_bool, nargs="?", const=True, default=None,
                   help="also build the IVF-PQ candidate index (kept up to date once built; --ann 0 drops it)")
    build = AnnBuildConfig()
    g.add_argument("--ann_nlist", type=int, default=build.nlist,
                   help="centroids (0: a power of two near 8 * sqrt(tokens); two-level k-means from 2048 on)")
    g.add_argument("--ann_pq_m", type=int, default=build.pq_m, help="bytes per token code (must divide the embedding size)")
    g.add_argument("--ann_train_tokens", type=int, default=build.train_tokens,
                   help="tokens sampled to train the quantisers (0: 16 per centroid, at least 131072)")
    g.add_argument("--ann_retrain", type=_bool, nargs="?", const=True, default=False,
                   help="train the quantisers again and re-code every video")


def _query_parser(sub) -> None:
    p = sub.add_parser("query", help="search an index with text", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument("--index", required=True, help="index folder written by `index`")
    p.add_argument("--queries", help="file with one query per line (instead of / besides the positional query)")
    p.add_argument("--top", type=int, default=10, help="results per query")
    p.add_argument("--json", type=_bool, nargs="?", const=True, default=False, help="one JSON object per query line")
    p.add_argument("--explain", help="PNG path: why the top result(s) matched")
    p.add_argument("--explain_top", type=int, default=1, help="how many top results to explain per query")
    p.add_argument("--checkpoint", help="use this copy of the index's checkpoint (another model is refused)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    g = p.add_argument_group("approximate search (index built with --ann)")
    g.add_argument("--ann", type=_bool, nargs="?", const=True, default=False,
                   help="candidates from the IVF-PQ index, re-ranked exactly (default: exhaustive)")
    search = AnnSearchConfig()
    g.add_argument("--nprobe", type=int, default=search.nprobe, help="centroids probed per query token")
    g.add_argument("--centroid_candidates", type=int, default=search.centroid_candidates,
                   help="candidates scored on centroids")
    g.add_argument("--pq_candidates", type=int, default=search.pq_candidates,
                   help="candidates scored on centroid + PQ residual")
    g.add_argument("--rerank", type=int, default=search.rerank, help="candidates scored exactly on the stored tokens")


def run_index(args) -> int:
    from ..utils.launch import cleanup_distributed, setup_distributed
    from .index import IndexOptions, build_index

    runtime = setup_distributed(0, args.device)
    if runtime.rank:
        logging.getLogger().setLevel(logging.WARNING)
    opts = IndexOptions(batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size, ann=args.ann,
                        ann_config=AnnBuildConfig(nlist=args.ann_nlist, pq_m=args.ann_pq_m,
                                                  train_tokens=args.ann_train_tokens),
                        ann_retrain=args.ann_retrain)
    summary = build_index(args.checkpoint, args.videos, args.out, opts, runtime)
    cleanup_distributed()  # after success only (see its docstring)
    if summary is None:  # not rank 0
        return 0
    print(f"index {summary.index_dir}: {summary.total} videos ({summary.encoded} encoded now, "
          f"{summary.unchanged} unchanged, {summary.removed} removed), {len(summary.failed)} failed to decode")
    for f in summary.failed:
        print(f"  failed: {f['key']}: {f['error']}")
    return 1 if summary.failed else 0


def _read_queries(args) -> list:
    queries = [args.query] if args.query else []
    if args.queries:
        if not os.path.isfile(args.queries):
            raise FileNotFoundError(f"--queries {args.queries}: no such file")
        with open(args.queries, encoding="utf-8") as f:
            queries += [line.strip() for line in f if line.strip()]
    if not queries:
        raise ValueError("give a query, or --queries FILE with one query per line")
    return queries


def _explain_paths(base: str, n_queries: int, top: int):
    stem, ext = os.path.splitext(base)
    ext = ext or ".png"
    for qi in range(n_queries):
        for r in range(1, top + 1):
            single = n_queries == 1 and top == 1
            yield qi, r, base if single else f"{stem}-q{qi + 1}-r{r}{ext}"


def run_query(args) -> int:
    from .explain import save_explanation
    from .query import Searcher, format_table
    from .videos import VideoLoader

    queries = _read_queries(args)
    searcher = Searcher(args.index, checkpoint=args.checkpoint, device=args.device)
    ann = (AnnSearchConfig(args.nprobe, args.centroid_candidates, args.pq_candidates, args.rerank) if args.ann else None)
    results = searcher.search(queries, top=args.top, ann=ann)
    for res in results:
        for note in res.notes:
            print(f"note: query {res.query!r}: {note}", file=sys.stderr)
        print(json.dumps(res.to_json()) if args.json else format_table(res, searcher.reader.branches) + "\n")
    if args.explain:
        loader = VideoLoader(searcher.sm.run_cfg.data)
        root = searcher.reader.manifest["video_root"]
        for qi, rank, path in _explain_paths(args.explain, len(queries), args.explain_top):
            if rank > len(results[qi].hits):
                continue
            hit = results[qi].hits[rank - 1]
            video_path = os.path.join(root, hit.key)
            if not os.path.isfile(video_path):
                print(f"cannot explain {hit.key}: {video_path} is gone", file=sys.stderr)
                continue
            lv = loader(video_path)
            save_explanation(searcher.sm.model, queries[qi], lv.video, lv.mask, lv.timestamps, lv.thumbnails, path,
                             tokenizer=searcher.sm.tokenizer, max_words=searcher.max_words,
                             title=f'"{queries[qi]}"  rank {rank}: {hit.key}')
            print(f"explanation: {path}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvr.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _index_parser(sub)
    _query_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .store import SearchIndexError
    from ..utils.checkpoint import CheckpointError

    try:
        return run_index(args) if args.command == "index" else run_query(args)
    except (SearchIndexError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    end_process(main())
