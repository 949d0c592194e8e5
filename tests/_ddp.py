"""Two CPU ranks (gloo) through accelerate, for the DDP tests: start the ranks, and give each rank its Accelerator."""

import os
import socket
from datetime import timedelta

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_rank_accelerator(rank: int, port: int, world: int):
    """Inside a started rank: the torchrun environment, one thread, and a fresh CPU `Accelerator` for `rank`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.state import AcceleratorState, GradientState

    # A forked rank inherits the parent's accelerate singletons: start from a clean state.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    # A short timeout turns a collective that one rank never joins into an error instead of a hung CI job.
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
    assert accelerator.num_processes == world and accelerator.process_index == rank
    return accelerator


def run_ranks(worker, out_dir: str, world: int) -> None:
    """Run `worker(rank, port, out_dir)` in `world` processes (fork where available: the ranks share imports)."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=world, join=True, start_method=method)
