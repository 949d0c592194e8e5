"""DPL stage 1: search per-layer prefix-prompt lengths with a supernet (Huang et al., IJCAI 2025).

    # the toy world with the shipped toy CLIP (CPU, a few minutes)
    accelerate launch examples/dpl_search.py --dataset toy_objects --num_epochs 5 --output_dir runs/dpl_toy

    # a paper setting: 16 shots, the released supernet schedule (80 epochs, batch 4, lr 3.5e-3)
    accelerate launch examples/dpl_search.py --model openai/clip-vit-base-patch16 --dataset dtd --data_dir /data \
        --shots 16 --seed 1 --output_dir runs/dpl_dtd

    # checkpoint every 50 steps (or `--checkpointing_steps epoch`), then resume an interrupted search exactly
    accelerate launch examples/dpl_search.py ... --checkpointing_steps 50
    accelerate launch examples/dpl_search.py ... --checkpointing_steps 50 --resume_from_checkpoint latest

Writes `<output_dir>/found.json` (a `DeepPromptConfig(mode="prefix")` with the per-layer argmax lengths),
`alphas.json` (softmaxed alpha per tower), `supernet/` (the searched adapter) and `checkpoints/checkpoint_<n>/` (the
training loop's format, with its flags: `--checkpointing_steps` N or "epoch", validated as examples/train.py's, plus
one at the end; `--checkpoints_total_limit` keeps the newest n; `--resume_from_checkpoint latest`). The older
`--checkpoint_every N` is an alias of `--checkpointing_steps N`.

DPL stage 2: train fresh prompts of the found lengths with the normal loop (optionally distilling zero-shot CLIP).
As released, the text input is the template ensemble (`CTX_INIT "ensemble"`: token embeddings averaged over the 60
ImageNet templates); `--subnet_text_input template` writes a found.json that feeds the dataset's template instead:

    accelerate launch examples/train.py --method dpl --config runs/dpl_dtd/found.json --dataset dtd --data_dir /data \
        [--kd_weight 1.0 --kd_temperature 1.0]

`--help` lists every argument.
"""

import logging
import sys

from accelerate import PartialState
from accelerate.logging import get_logger

from peft_vlprompt.dpl.run import check_args, parse_args, run_search

logger = get_logger(__name__)


def checked_args(argv: list[str]):
    """The parsed and checked arguments; our own validation errors end the script like argparse's (status 2, one
    line, no traceback), before anything is loaded."""
    try:
        run_args, search_args = parse_args(argv)
        check_args(run_args, search_args)
    except (ValueError, TypeError) as e:  # FieldTypeError is both
        print(f"examples/dpl_search.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return run_args, search_args


if __name__ == "__main__":
    state = PartialState()
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if state.is_main_process else logging.WARNING,
    )
    result = run_search(*checked_args(sys.argv[1:]))
    logger.info("DPL search done: %s", result, main_process_only=True)
