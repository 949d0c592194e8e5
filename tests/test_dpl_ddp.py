"""DPL search under 2 CPU processes (gloo, through accelerate): 2 ranks x batch 1 give the parameters of one process
with batch 2 (the ranks average their gradients; the batch order gives each rank half of the same global batch), and
both ranks hold identical alpha and prompts; a 2-process search stopped after 2 steps and resumed from `latest` by a
fresh search ends bit-identical to the uninterrupted one; and (slow) both ranks SIGKILLed mid-step at a seeded point,
then resumed by two fresh processes from `latest`, end with the uninterrupted 2-process run's supernet, bit for bit.

Run: `python -m pytest tests/test_dpl_ddp.py -q` (starts 2 processes).
"""

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests._ddp import cpu_rank_accelerator, free_port, run_ranks

WORLD = 2


def _build(out_dir: str, batch_size: int, accelerator=None, max_steps=None):
    """A fresh supernet (same init on every rank and run) and its search, checkpointing every step."""
    from peft import get_peft_model

    from peft_vlprompt import DPLSearchConfig, PromptClassifier
    from peft_vlprompt.dpl import DPLSearch, DPLSearchArguments
    from tests.tiny import IMAGE_SIZE, tiny_clip, tokenizer

    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=g), "labels": i % 3} for i in range(8)]
    clip = tiny_clip()
    torch.manual_seed(0)
    config = DPLSearchConfig(text_candidates=[0, 1, 2], vision_candidates=[0, 2], prompt_init="normal", init_std=0.3)
    model = get_peft_model(clip, config)
    classifier = PromptClassifier(model, tokenizer(), ["cat", "dog", "bird"])
    torch.manual_seed(1000 + (accelerator.process_index if accelerator else 0))  # resuming must not depend on it
    args = DPLSearchArguments(num_epochs=1, batch_size=batch_size, lr=0.05, alpha_lr=0.05, warmup_epochs=0,
                              max_steps=max_steps, checkpointing_steps="1")  # fmt: skip
    return DPLSearch(model, classifier, data, data[:4], args, out_dir, accelerator=accelerator)


def _params(search) -> torch.Tensor:
    from peft_vlprompt.tuners.dpl import alpha_parameters, prompt_parameters

    return torch.cat([p.detach().flatten() for p in alpha_parameters(search.model) + prompt_parameters(search.model)])


def _search(out_dir: str, batch_size: int, accelerator=None, max_steps=None, resume=None) -> torch.Tensor:
    search = _build(out_dir, batch_size, accelerator, max_steps)
    if resume:
        search.resume(resume)
    steps = len(search.run())
    if resume:  # only the steps after the checkpoint ran (a no-op resume would redo all 4 from the same init)
        assert steps == 2 and search.global_step == 4, (steps, search.global_step)
    return _params(search)


def _worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = cpu_rank_accelerator(rank, port, WORLD)
    params = _search(os.path.join(out_dir, "ddp"), batch_size=1, accelerator=accelerator)
    torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    split = os.path.join(out_dir, "split")
    _search(split, batch_size=1, accelerator=accelerator, max_steps=2)  # killed after step 2
    resumed = _search(split, batch_size=1, accelerator=accelerator, resume="latest")
    torch.save(resumed, os.path.join(out_dir, f"resumed{rank}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


def test_two_processes_match_one_process(tmp_path):
    run_ranks(_worker, tmp_path, WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert torch.equal(ranks[0], ranks[1])
    expected = _search(str(tmp_path / "single"), batch_size=2)
    torch.testing.assert_close(ranks[0], expected, atol=1e-5, rtol=0)
    # each rank's RNG state is checkpointed, in JSON + safetensors like every other part
    assert (tmp_path / "ddp" / "checkpoints" / "checkpoint_3" / "rng_state_1.safetensors").is_file()
    for r in range(WORLD):
        assert torch.equal(torch.load(tmp_path / f"resumed{r}.pt"), ranks[0])


# -- a real kill of both ranks ---------------------------------------------------------------------------------------
def _blocking_worker(rank: int, port: int, out_dir: str, block_at: int) -> None:
    """Search with a checkpoint every step; at half-step call `block_at` (after checkpoints were published, with
    alpha or prompts already moved in memory past the newest one) say so and wait for the SIGKILL."""
    accelerator = cpu_rank_accelerator(rank, port, WORLD)
    search = _build(os.path.join(out_dir, "split"), batch_size=1, accelerator=accelerator)
    half_step, calls = search._half_step, []

    def hooked(*args, **kwargs):
        calls.append(1)
        if len(calls) == block_at:
            Path(out_dir, f"blocked{rank}").touch()
            time.sleep(600)  # killed here
        return half_step(*args, **kwargs)

    search._half_step = hooked
    search.run()
    raise AssertionError(f"rank {rank} finished the search: it should have been killed at half-step {block_at}")


def _resume_worker(rank: int, port: int, out_dir: str) -> None:
    accelerator = cpu_rank_accelerator(rank, port, WORLD)
    search = _build(os.path.join(out_dir, "split"), batch_size=1, accelerator=accelerator)
    search.resume("latest")
    resumed_from = search.global_step
    search.run()
    torch.save({"from": resumed_from, "steps": search.global_step, "params": _params(search)},
               os.path.join(out_dir, f"resumed{rank}.pt"))  # fmt: skip
    full = _build(os.path.join(out_dir, "full"), batch_size=1, accelerator=accelerator)
    full.run()
    torch.save(_params(full), os.path.join(out_dir, f"full{rank}.pt"))
    accelerator.wait_for_everyone()
    accelerator.end_training()


@pytest.mark.slow
def test_both_ranks_killed_mid_step_resume_bit_exactly(tmp_path):
    # 8 images, 2 ranks x batch 1: 4 steps of 2 half-steps; block in step k+1 (k >= 1 checkpoints published), in its
    # alpha (call 2k+1) or prompt (call 2k+2) half-step
    rng = random.Random(15)
    done_steps = rng.randint(1, 3)
    block_at = 2 * done_steps + rng.choice((1, 2))
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(_blocking_worker, args=(free_port(), str(tmp_path), block_at), nprocs=WORLD,
                                 join=False, start_method=method)  # fmt: skip
    try:
        while not all((tmp_path / f"blocked{r}").exists() for r in range(WORLD)):
            dead = [(r, p.exitcode) for r, p in enumerate(context.processes) if not p.is_alive()]
            assert not dead, f"a rank ended before the kill point (rank, exit code): {dead}"
            time.sleep(0.05)
    finally:
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in context.processes:
            p.join()
    assert [p.exitcode for p in context.processes] == [-signal.SIGKILL] * WORLD

    run_ranks(_resume_worker, tmp_path, WORLD)
    for r in range(WORLD):
        resumed, full = torch.load(tmp_path / f"resumed{r}.pt"), torch.load(tmp_path / f"full{r}.pt")
        assert (resumed["from"], resumed["steps"]) == (done_steps, 4)  # the newest published checkpoint, then the rest
        assert torch.equal(resumed["params"], full)
    assert torch.equal(torch.load(tmp_path / "full0.pt"), torch.load(tmp_path / "full1.pt"))
