"""Render (and optionally upload) the card of an adapter that is already saved, without loading CLIP.

    python -m peft_vlprompt.hub ADAPTER_DIR --results all_results.json --base-model openai/clip-vit-base-patch16 \\
        [--training-config args.json] [--dataset caltech101] [--repo-id me/coop-caltech101] [--output card.md] \\
        [--push]

Writes `ADAPTER_DIR/README.md` (or `--output`, e.g. `hub_cards/coop/coop-caltech101.md` for review) atomically.
With `--push`, uploads `adapter_config.json`, `adapter_model.safetensors` and the card to `--repo-id`.
"""

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.constants import REPOCARD_NAME
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

from .._atomic import temp_name
from .cards import check_publishable, render_card  # importing the package registered the methods with peft

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m peft_vlprompt.hub", description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir", type=Path, help="Folder with adapter_config.json + adapter_model.safetensors.")
    parser.add_argument("--results", type=Path, help="The training script's all_results.json.")
    parser.add_argument("--training-config", type=Path, help="JSON file of the training arguments.")
    parser.add_argument("--dataset", help="Dataset name (default: from the results).")
    parser.add_argument("--base-model", help="Hub id of the base CLIP (default: from adapter_config.json).")
    parser.add_argument("--repo-id", help="Hub repository the card's usage snippet loads from.")
    parser.add_argument("--output", type=Path, help="Where to write the card (default: ADAPTER_DIR/README.md).")
    parser.add_argument("--push", action="store_true", help="Upload the adapter and the card to --repo-id.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private (with --push).")
    args = parser.parse_args(argv)
    if args.push and not args.repo_id:
        parser.error("`--push` needs `--repo-id`")
    return args


def _read_json(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    results = _read_json(args.results)
    if args.push:  # a NaN adapter or result fails before the repository is created
        check_publishable(args.adapter_dir, results)
    api = HfApi() if args.push else None
    repo_id = api.create_repo(args.repo_id, private=args.private, exist_ok=True).repo_id if api else args.repo_id
    card = render_card(
        args.adapter_dir,
        repo_id=repo_id,
        results=results,
        training_config=_read_json(args.training_config),
        dataset=args.dataset,
        base_model=args.base_model,
    )
    output = args.output or args.adapter_dir / REPOCARD_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(output.parent, f".{output.name}.", ".tmp")  # created by card.save: mode from the umask
    card.save(tmp)
    os.replace(tmp, output)
    logger.info("wrote %s", output)
    if api is not None:
        with tempfile.TemporaryDirectory() as folder:
            config = json.loads((args.adapter_dir / CONFIG_NAME).read_text())
            if args.base_model:  # AutoPeftModel follows this to the base CLIP
                config["base_model_name_or_path"] = args.base_model
            Path(folder, CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
            Path(folder, SAFETENSORS_WEIGHTS_NAME).write_bytes(
                (args.adapter_dir / SAFETENSORS_WEIGHTS_NAME).read_bytes()
            )
            card.save(Path(folder, REPOCARD_NAME))
            api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload prompts with peft_vlprompt")
        logger.info("uploaded %s", repo_id)
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
