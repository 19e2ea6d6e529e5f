"""Process-group setup for plain ``python``, ``torchrun`` and ``torch.distributed.launch``."""
import logging
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist



@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(local_rank: int, device: str = "auto") -> Runtime:
    """Initialise the process group when launched with several processes.

    ``device``: "auto" (CUDA when available), "cuda" or "cpu". The backend follows the device, nccl
    on CUDA and gloo on the CPU, because nccl only reduces CUDA tensors: a CPU run on a GPU machine
    needs gloo. The launchers export RANK / WORLD_SIZE / MASTER_ADDR, so the default ``env://``
    rendezvous works for both.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank))
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    if cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank,
                   device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


def cleanup_distributed() -> None:
    """Tear the process group down at the end of a successful run; call it only then.

    Every rank waits at a barrier first: a rank tearing down while another still finishes its work
    could hang in ``destroy_process_group`` (seen with gloo on torch 2.3). After an error nothing is
    torn down, since the teardown waits on ranks that may be stuck elsewhere; the process exits and
    the launcher stops the others."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_process(status: int) -> NoReturn:
    """Exit an entry point; a process launched as one of several skips the interpreter's teardown.

    Why: once ``DistributedDataParallel`` has been built, torch keeps the gloo process group alive
    after ``destroy_process_group``, so gloo's worker threads still run while Python tears itself
    down. A worker that then frees the last reference to a tensor of an earlier collective (the
    final barrier holds the evaluation's gather) needs the GIL, which a finalising interpreter no
    longer grants: the process aborts ("terminate called without an active exception", SIGABRT)
    after all its work is done (3 of about 170 two-process CPU training runs on a busy 2-core
    machine), and the launcher reports the run as failed. Without the teardown there is nothing
    left to race. Everything the project writes is complete by then (checkpoints and results are
    written atomically; the logs and streams are flushed here). A single process exits normally."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
