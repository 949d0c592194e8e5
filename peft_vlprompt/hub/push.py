"""Share prompts: `save_pretrained` + our model card as README.md, then `HfApi.create_repo` / `upload_folder`.

Not `PeftModel.push_to_hub`: that is transformers' `PushToHubMixin.push_to_hub`, which rewrites README.md with a card
saying `library_name: transformers` and drops the PEFT metadata (reference/hf_integration.md §6).
"""

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.constants import REPOCARD_NAME
from peft import PeftModel

from .._atomic import make_temp_dir, normal_mode
from .cards import adapter_config, check_publishable, render_card

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload prompts trained with peft_vlprompt"


@contextlib.contextmanager
def _recorded_base_model(model: PeftModel, base_model: str | None) -> Iterator[None]:
    """Write `base_model` into every adapter config while saving (so AutoPeftModel finds the base), then restore."""
    if not base_model:
        yield
        return
    previous = {name: config.base_model_name_or_path for name, config in model.peft_config.items()}
    for config in model.peft_config.values():
        config.base_model_name_or_path = base_model
    try:
        yield
    finally:
        for name, value in previous.items():
            model.peft_config[name].base_model_name_or_path = value


def _move_into(source: Path, target: Path) -> None:
    """Move every file of `source` into `target` with `os.replace` (atomic per file on one filesystem)."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)


def save_prompts_with_card(
    model: PeftModel,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    results: Mapping | None = None,
    training_config: Mapping | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    classnames: Sequence[str] | None = None,
    template: str | None = None,
) -> ModelCard:
    """Save the adapter (`adapter_config.json`, `adapter_model.safetensors`) and our card as `README.md`.

    Everything is written to a temporary folder inside `folder` first and then moved into place file by file, so an
    interrupted save never leaves a half-written file. Arguments as in `render_card`; `base_model` (a Hub id) is
    also written into `adapter_config.json` as `base_model_name_or_path`, which `AutoPeftModel` follows: set it when
    training used a local copy of the base CLIP.

    Returns:
        The rendered `ModelCard`.
    """
    adapter_config(model)  # fail before writing anything if this is not a peft_vlprompt PeftModel
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(folder, ".saving-")  # not mkdtemp: its 0700 would not respect the umask
    try:
        with _recorded_base_model(model, base_model):
            model.save_pretrained(staging, save_embedding_layers=False)  # prompts never change the vocabulary
            card = render_card(
                model,
                repo_id=repo_id,
                results=results,
                training_config=training_config,
                dataset=dataset,
                base_model=base_model,
                classnames=classnames,
                template=template,
            )
        card.save(staging / REPOCARD_NAME)  # replaces the card peft's save_pretrained wrote
        for path in staging.iterdir():
            normal_mode(path)  # safetensors writes 0600
        _move_into(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def push_prompts(
    model: PeftModel,
    repo_id: str,
    *,
    results: Mapping | None = None,
    training_config: Mapping | None = None,
    dataset: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    api: HfApi | None = None,
    base_model: str | None = None,
    classnames: Sequence[str] | None = None,
    template: str | None = None,
):
    """Upload the adapter and its model card to the Hub repository `repo_id` (created if missing).

    Args:
        model: the (unwrapped) `PeftModel` holding a peft_vlprompt adapter.
        repo_id: `"user/name"` (or `"name"` for the token's user).
        results: the training script's `all_results.json` dict, shown in the card and its `model-index`.
        training_config: the training arguments (`vars(args)`); credentials are left out of the card.
        dataset: dataset name for the card (defaults to `results["dataset"]`).
        private: create the repository as private.
        token: Hub token (defaults to the logged-in one).
        commit_message: message of the upload commit.
        api: an `HfApi` to use (tests pass a fake one).
        base_model, classnames, template: see `save_prompts_with_card` and `render_card`.

    Returns:
        The `CommitInfo` returned by `HfApi.upload_folder`.

    Example:
        >>> push_prompts(model, "me/coop-caltech101", results=all_results, training_config=vars(args))
    """
    check_publishable(model, results)  # a NaN adapter or result fails before the repository is created
    api = api if api is not None else HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    repo_id = getattr(repo, "repo_id", None) or repo_id  # "name" -> "user/name"
    with tempfile.TemporaryDirectory(prefix="peft_vlprompt-push-") as folder:
        save_prompts_with_card(
            model,
            folder,
            repo_id=repo_id,
            results=results,
            training_config=training_config,
            dataset=dataset,
            base_model=base_model,
            classnames=classnames,
            template=template,
        )
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, token=token, repo_type="model"
        )
    logger.info("uploaded prompts to %s", repo_id)
    return commit
