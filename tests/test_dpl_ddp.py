"""DPL search under 2 CPU processes (gloo, through accelerate): 2 ranks x batch 1 give the parameters of one process
with batch 2 (the ranks average their gradients; the batch order gives each rank half of the same global batch), and
both ranks hold identical alpha and prompts; and a 2-process search stopped after 2 steps (the kill) and resumed from
`latest` by a fresh search ends bit-identical to the uninterrupted one.

Run: `python -m pytest tests/test_dpl_ddp.py -q` (starts 2 processes).
"""

import os

import torch

from tests._ddp import cpu_rank_accelerator, run_ranks

WORLD = 2


def _search(out_dir: str, batch_size: int, accelerator=None, max_steps=None, resume=None) -> torch.Tensor:
    from peft import get_peft_model

    from peft_vlprompt import DPLSearchConfig, PromptClassifier
    from peft_vlprompt.dpl import DPLSearch, DPLSearchArguments
    from peft_vlprompt.tuners.dpl import alpha_parameters, prompt_parameters
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
                              max_steps=max_steps, checkpoint_every=1)  # fmt: skip
    search = DPLSearch(model, classifier, data, data[:4], args, out_dir, accelerator=accelerator)
    if resume:
        search.resume(resume)
    steps = len(search.run())
    if resume:  # only the steps after the checkpoint ran (a no-op resume would redo all 4 from the same init)
        assert steps == 2 and search.global_step == 4, (steps, search.global_step)
    return torch.cat([p.detach().flatten() for p in alpha_parameters(model) + prompt_parameters(model)])


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
