"""ProGrad under 2-process CPU DDP (gloo) through accelerate: same parameters as one process with the whole batch,
and bit-identical parameters on both ranks, with and without gradient accumulation.

Run: `python -m pytest tests/test_prograd_ddp.py -q` (starts 2 processes).
"""

import os
import socket
from datetime import timedelta

import torch
import torch.multiprocessing as mp
from _prograd_toy import accelerated_run, make_batches, reference_run

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
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
    assert accelerator.num_processes == WORLD and accelerator.process_index == rank
    batches = make_batches()
    for accumulation in (1, 2):
        accelerator.gradient_accumulation_steps = accumulation
        params, fractions = accelerated_run(accelerator, batches, accumulation, rank=rank, world=WORLD)
        torch.save(
            {"params": params, "fractions": fractions}, os.path.join(out_dir, f"rank{rank}_acc{accumulation}.pt")
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()


def test_ddp_matches_single_process_and_ranks_agree(tmp_path):
    # Fork shares the parent's imports (torch, accelerate, and DTensor/dynamo, which `prepare` and DDP's constructor
    # import): with spawn every rank re-imports them, which is most of this test's time on 2 cores.
    import torch._dynamo  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method=method)
    expected, n_projected = reference_run(make_batches())
    assert n_projected > 0
    for accumulation in (1, 2):
        runs = [torch.load(tmp_path / f"rank{r}_acc{accumulation}.pt") for r in range(WORLD)]
        assert sum(runs[0]["fractions"]) > 0 and runs[0]["fractions"] == runs[1]["fractions"]
        for name, value in expected.items():
            assert torch.equal(runs[0]["params"][name], runs[1]["params"][name]), (accumulation, name)
            torch.testing.assert_close(runs[0]["params"][name], value, rtol=1e-6, atol=1e-6, msg=name)
