"""ProGrad under 2-process CPU DDP (gloo) through accelerate: same parameters as one process with the whole batch,
and bit-identical parameters on both ranks, with and without gradient accumulation.

Run: `python -m pytest tests/test_prograd_ddp.py -q` (starts 2 processes).
"""

import os

import torch
from _prograd_toy import accelerated_run, make_batches, reference_run

from tests._ddp import cpu_rank_accelerator, run_ranks

WORLD = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = cpu_rank_accelerator(rank, port, WORLD)
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

    run_ranks(_worker, tmp_path, WORLD)
    expected, n_projected = reference_run(make_batches())
    assert n_projected > 0
    for accumulation in (1, 2):
        runs = [torch.load(tmp_path / f"rank{r}_acc{accumulation}.pt") for r in range(WORLD)]
        assert sum(runs[0]["fractions"]) > 0 and runs[0]["fractions"] == runs[1]["fractions"]
        for name, value in expected.items():
            assert torch.equal(runs[0]["params"][name], runs[1]["params"][name]), (accumulation, name)
            torch.testing.assert_close(runs[0]["params"][name], value, rtol=1e-6, atol=1e-6, msg=name)
