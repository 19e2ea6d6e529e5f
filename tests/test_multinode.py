"""Multi-node training through torchrun's c10d rendezvous: two "nodes" of one process each on
127.0.0.1 give the same metrics and weights as one node with two processes, and only global rank
0 writes files (both nodes have a local rank 0)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tvr.dataloaders.synthetic import main as synthetic_main
from .spawn import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every file main.py writes goes through os.replace (atomic writes) or a logging.FileHandler
# (log.txt). The wrapper records which of them each process performed, with the rank variables
# torchrun gave it, and then runs main.py unchanged.
SPY = textwrap.dedent("""
    import json, logging, os, sys
    sys.path.insert(0, {repo!r})
    writes = []
    real_replace, real_init = os.replace, logging.FileHandler.__init__
    def replace(src, dst, *a, **k):
        writes.append(os.path.abspath(dst))
        return real_replace(src, dst, *a, **k)
    def file_handler(self, filename, *a, **k):
        writes.append(os.path.abspath(filename))
        return real_init(self, filename, *a, **k)
    os.replace, logging.FileHandler.__init__ = replace, file_handler
    import main
    try:
        main.main(sys.argv[1:])
    finally:
        ranks = {{k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")}}
        with open(os.path.join({spy_dir!r}, "writes.%d.json" % os.getpid()), "w") as f:
            json.dump({{"env": ranks, "writes": writes}}, f)
""")


def main_args(data, output_dir):
    return [
        "--do_train", "1", "--do_eval", "1",
        "--anno_path", str(data / "anns"), "--video_path", str(data / "videos"),
        "--base_encoder", "scratch:tiny", "--output_dir", str(output_dir),
        "--max_words", "12", "--max_frames", "2", "--video_framerate", "1",
        "--batch_size", "16", "--batch_size_val", "8", "--workers", "0", "--n_display", "1",
        "--epochs", "1", "--lr", "1e-3", "--coef_lr", "1", "--seed", "5",
    ]


def start(torchrun_args, script, args, log):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, str(script), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(procs, logs):
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text()[-6000:]


def spy_records(spy_dir):
    return [json.loads(p.read_text()) for p in sorted(spy_dir.glob("writes.*.json"))]


def final_weights(output_dir):
    return torch.load(output_dir / "last.pth", weights_only=True)["model"]


@pytest.mark.slow
def test_two_nodes_match_one_node_with_two_processes_and_only_global_rank_0_writes(tmp_path):
    data = tmp_path / "data"
    synthetic_main(["--output_dir", str(data), "--num_train", "16", "--num_test", "8", "--seed", "1", "--workers", "1"])
    one_node, two_nodes = tmp_path / "one_node", tmp_path / "two_nodes"
    procs, logs = [], []
    # Both runs at once (4 workers): the start-up of one overlaps the other's work.
    for name, out in (("one_node", one_node), ("two_nodes", two_nodes)):
        (tmp_path / f"spy_{name}").mkdir()
        script = tmp_path / f"spy_{name}.py"
        script.write_text(SPY.format(repo=REPO, spy_dir=str(tmp_path / f"spy_{name}")))
        if name == "one_node":
            launches = [["--standalone", "--nproc_per_node", "2"]]
        else:
            endpoint = f"127.0.0.1:{free_port()}"
            launches = [["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                         "--rdzv_endpoint", endpoint, "--rdzv_id", "multinode_test"] for node in (0, 1)]
        for i, torchrun_args in enumerate(launches):
            logs.append(tmp_path / f"{name}.{i}.out")
            procs.append(start(torchrun_args, script, main_args(data, out), open(logs[-1], "w")))
    finish(procs, logs)

    # The same run: metrics and weights. Measured difference: none (bit-identical weights); both runs
    # make the same two-rank gloo sums, which do not depend on how ranks are grouped into nodes.
    one = json.loads((one_node / "eval_results.json").read_text())
    two = json.loads((two_nodes / "eval_results.json").read_text())
    for key in ("t2v", "v2t", "temporal"):
        assert two[key] == one[key], key
    a, b = final_weights(one_node), final_weights(two_nodes)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(b[name], a[name]), name

    # Exactly one writer per run, global rank 0; in the two-node run the other node's process has
    # local rank 0 too and writes nothing.
    for run_dir, spy in ((one_node, tmp_path / "spy_one_node"), (two_nodes, tmp_path / "spy_two_nodes")):
        records = spy_records(spy)
        assert len(records) == 2
        writers = [r for r in records if any(w.startswith(str(run_dir)) for w in r["writes"])]
        assert [w["env"]["RANK"] for w in writers] == ["0"], records
        names = {os.path.basename(w) for w in writers[0]["writes"]}
        assert {"log.txt", "last.pth", "best.pth", "eval_results.json", "config.json"} <= names
    node_env = sorted((r["env"]["GROUP_RANK"], r["env"]["LOCAL_RANK"], r["env"]["RANK"]) for r in spy_records(tmp_path / "spy_two_nodes"))
    assert [(g, lr) for g, lr, _ in node_env] == [("0", "0"), ("1", "0")] and {r for _, _, r in node_env} == {"0", "1"}

    # log.txt has one writer: the header is not doubled; evaluate() logged its stage times.
    log = (two_nodes / "log.txt").read_text()
    assert log.count("Effective arguments") == 1
    assert log.count("world size 2") == 1
    assert "seconds per stage: encode_texts" in log and "score" in log
