"""How the entry points end a process (``tvr.utils.launch.end_process``).

A process of a multi-process run must not go through the interpreter's teardown while gloo's worker
threads live on (torch keeps the process group alive after DistributedDataParallel): a worker that
needs the GIL then, for example to free a tensor of an earlier collective or to run a future's
callback, aborts the whole process after its work is done. The script below makes that race certain
instead of rare: rank 0's collective completes (its callback runs on gloo's thread) while rank 0's
teardown is held open by a slow finaliser. Exited through the teardown, rank 0 dies of SIGABRT.
"""
import os
import subprocess
import sys
import textwrap

from .spawn import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import atexit, logging, os, sys, time
    import torch
    import torch.distributed as dist
    from tvr.utils.launch import end_process

    log_path, teardown_marker = sys.argv[1], sys.argv[2]
    logging.basicConfig(filename=log_path, level=logging.INFO)
    atexit.register(lambda: open(teardown_marker, "w").close())  # runs only if the teardown does
    if os.environ.get("WORLD_SIZE", "1") == "1":
        end_process(3)
    dist.init_process_group("gloo")
    if dist.get_rank() == 1:
        time.sleep(2)  # late, so that rank 0's collective completes while rank 0 is exiting
        try:
            dist.all_reduce(torch.ones(4))
        except Exception:  # rank 0 may be gone already: not what this test is about
            pass
        os._exit(0)
    work = dist.all_reduce(torch.ones(4), async_op=True)
    callback = work.get_future().then(lambda f: f.value())  # runs on gloo's worker thread, with the GIL

    class SlowTeardown:  # a cycle, collected during the teardown, which it holds open for 4 s
        def __del__(self):
            time.sleep(4)

    s = SlowTeardown()
    s.cycle = s
    del s, work, callback
    logging.info("last record before exiting")
    print("printed before exiting")  # stdout is a pipe here, so block-buffered
    end_process(3)
''')


def _run(tmp_path, rank=None, port=None):
    dropped = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYTHONUNBUFFERED")  # stdout stays buffered
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    name = "single" if rank is None else f"rank{rank}"
    script = tmp_path / "exit_script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{name}.log"), str(tmp_path / f"{name}.teardown")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_rank_exits_with_its_status_and_its_logs_without_racing_gloo_threads(tmp_path):
    port = free_port()
    ranks = [_run(tmp_path, rank, port) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in ranks]
    assert ranks[0].returncode == 3, outputs[0]  # -6 (SIGABRT) when the teardown races gloo's thread
    assert "last record before exiting" in (tmp_path / "rank0.log").read_text()
    assert "printed before exiting" in outputs[0]  # flushed before exiting
    assert not (tmp_path / "rank0.teardown").exists()


def test_a_single_process_exits_through_the_normal_teardown(tmp_path):
    proc = _run(tmp_path)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, output
    assert (tmp_path / "single.teardown").exists()  # atexit handlers ran
