"""Train (or evaluate zero-shot) a CLIP prompt-learning method with Accelerate.

    # the embedded default: ProGrad-CoOp, toy base-to-new task (night domain), shipped toy CLIP (~2-3 min, CPU)
    python examples/train.py

    # a paper setting (hyperparameters from peft_vlprompt/training/presets.py; explicit flags override them)
    accelerate launch examples/train.py --method coop --dataset oxford_pets --data_dir /data \
        --model openai/clip-vit-base-patch16 --shots 16 --seed 1 --protocol base2new

    # several processes (DDP) on CPU, e.g. to check a multi-GPU setup without GPUs
    accelerate launch --config_file examples/accelerate_configs/cpu_ddp.yaml examples/train.py --method prograd ...

    # any image-classification dataset (as transformers' run_image_classification_no_trainer.py): imagefolders, or a
    # `datasets` dataset (Hub id or `save_to_disk` folder); the accuracies also go to the trackers
    accelerate launch examples/train.py --method coop --protocol few_shot --train_dir flowers/train \
        --validation_dir flowers/val --with_tracking --report_to tensorboard
    accelerate launch examples/train.py --method coop --dataset_name user/flowers --class_names_file names.txt

    # transformers' flag names (--learning_rate, --num_train_epochs, ...), or all arguments in one JSON file
    accelerate launch examples/train.py args.json

    # train the prompt lengths found by the DPL search
    accelerate launch examples/train.py --method dpl --config found.json --dataset dtd --data_dir /data

Writes `<output_dir>/adapter/` (load with `PeftModel.from_pretrained(clip, path)` after `import peft_vlprompt`),
`<output_dir>/all_results.json` and resumable adapter-only checkpoints (`--checkpointing_steps`). `--help` lists
every argument; `examples/aggregate_results.py` turns runs over seeds into the papers' tables. Every value has one
precedence: command line > --config file > method preset > default.
"""

import importlib.util
import logging
import os
import sys
import types
import typing
import warnings

# the arguments are parsed and checked with the standard library only, so `--help` and a mistyped flag answer at once
_LIGHT = ("peft_vlprompt", "peft_vlprompt.training")


def refuse(error: Exception) -> typing.NoReturn:
    """End a run our own checks refused like argparse ends a bad flag: one line on stderr, status 2, no traceback."""
    print(f"examples/train.py: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def parse_and_check(argv: list[str]):
    """`TrainArguments` of `argv`, with every check that needs neither torch nor a model (values, precedence, the
    `--config` file, method/config agreement, paths), without running the package's `__init__` (torch, peft)."""
    stubs = []
    root = importlib.util.find_spec("peft_vlprompt").submodule_search_locations[0]
    for name, path in zip(_LIGHT, (root, os.path.join(root, "training"))):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [path]
            sys.modules[name] = stub
            stubs.append(name)
    try:
        from peft_vlprompt.training.inputs import apply_config_file, check_paths
        from peft_vlprompt.training.method_checks import resolve_method
        from peft_vlprompt.training.parser import parse_args

        args = parse_args(argv)
        resolve_method(args, apply_config_file(args))
        check_paths(args)
    except (ValueError, TypeError, FileNotFoundError) as e:  # FieldTypeError is both
        refuse(e)
    finally:
        loaded = [m for m in sys.modules if m.startswith("peft_vlprompt.") and m not in _LIGHT]
        for name in stubs:  # the real package imports now; the light modules loaded above are reused as they are
            del sys.modules[name]
    import peft_vlprompt.training  # noqa: F401

    for name in loaded:  # bind the reused submodules to their real parents
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])
    return args


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_third_party() -> None:
    """Silence other libraries' messages that say nothing about this run (targeted: ours are untouched)."""
    # transformers warns that the torchvision image-processor backend is missing: the PIL one is the intended one
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropMessages("requires torchvision"))
    # peft calls a transformers helper that transformers 5 deprecates; nothing the user can act on
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # datasets draws a progress bar for each internal re-indexing of a split
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    # accelerate logs each file of a checkpoint it does not write (we save the adapter only)
    logging.getLogger("accelerate.checkpointing").setLevel(logging.WARNING)
    logging.getLogger("accelerate.accelerator").addFilter(_DropMessages("Saving current state", "Loading states"))


if __name__ == "__main__":
    # verbose logs from the main process only; the others report warnings and errors (the rank is read from the
    # launcher's environment: creating accelerate's state here would fix the device before `train` chooses it)
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if main_process else logging.WARNING,
    )
    args = parse_and_check(sys.argv[1:])
    quiet_third_party()
    from peft_vlprompt.training import format_results, train
    from peft_vlprompt.training.preflight import check_run

    try:  # the checks that need the package (dataset names, checkpoints, adapter settings); `train` repeats them
        check_run(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        refuse(e)
    from peft_vlprompt._validation import RunRefused

    try:
        results = train(args)
    except RunRefused as e:  # refused after loading data or model (resume, depth), still before any training
        refuse(e)
    if main_process:
        logging.getLogger("train").info("results\n%s", format_results(results))
