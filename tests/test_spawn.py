"""The multi-process test harness: a worker that dies in native code fails the test and leaves its
Python stack in the output, so a crash seen once in CI can be traced."""
import ctypes

import pytest

from .spawn import run_spawned


def _crash_on_rank_one(rank: int) -> None:
    if rank == 1:
        ctypes.string_at(0)  # reads address 0: SIGSEGV, no Python exception


def test_a_worker_killed_by_a_signal_fails_the_test_and_prints_its_stack(capfd):
    from torch.multiprocessing import ProcessExitedException

    with pytest.raises(ProcessExitedException, match="SIGSEGV"):
        run_spawned(_crash_on_rank_one, (), nprocs=2, timeout_s=60)
    err = capfd.readouterr().err
    assert "Fatal Python error: Segmentation fault" in err
    assert "_crash_on_rank_one" in err  # the stack names the worker's own frame
