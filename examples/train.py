"""Train (or evaluate zero-shot) a CLIP prompt-learning method with Accelerate.

    # the embedded default: ProGrad-CoOp, toy base-to-new task (night domain), shipped toy CLIP (~2-3 min, CPU)
    python examples/train.py

    # a paper setting (hyperparameters from peft_vlprompt/training/presets.py; explicit flags override them)
    accelerate launch examples/train.py --method coop --dataset oxford_pets --data_dir /data \
        --model openai/clip-vit-base-patch16 --shots 16 --seed 1 --protocol base2new

    # several processes (DDP) on CPU, e.g. to check a multi-GPU setup without GPUs
    accelerate launch --config_file examples/accelerate_configs/cpu_ddp.yaml examples/train.py --method prograd ...

    # train the prompt lengths found by the DPL search
    accelerate launch examples/train.py --method dpl --config found.json --dataset dtd --data_dir /data

Writes `<output_dir>/adapter/` (load with `PeftModel.from_pretrained(clip, path)` after `import peft_vlprompt`),
`<output_dir>/all_results.json` and resumable adapter-only checkpoints (`--checkpointing_steps`). `--help` lists
every argument; `examples/aggregate_results.py` turns runs over seeds into the papers' tables.
"""

import logging
import os

from accelerate.logging import get_logger

from peft_vlprompt.training import format_results, main

logger = get_logger(__name__)


if __name__ == "__main__":
    # verbose logs from the main process only; the others report warnings and errors (the rank is read from the
    # launcher's environment: creating accelerate's state here would fix the device before `main` chooses it)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
    )
    results = main()
    logger.info("results\n%s", format_results(results), main_process_only=True)
