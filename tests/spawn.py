"""Helpers for tests that start several processes on this machine (gloo on the loopback address)."""
import faulthandler
import socket
import time

import pytest


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for a rendezvous on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traced(rank: int, worker, *args) -> None:
    """Run ``worker`` with Python's fault handler on, so a worker killed by a signal (a crash in native
    code) prints every thread's Python stack to stderr; torch's exception then only says which signal."""
    faulthandler.enable()
    worker(rank, *args)


def run_spawned(worker, args: tuple, nprocs: int, timeout_s: float) -> None:
    """``worker(rank, *args)`` in ``nprocs`` fresh processes; fail the test (killing them) if they hang."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_traced, args=(worker,) + tuple(args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s")
