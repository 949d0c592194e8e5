"""Model cards for shared prompts, rendered from the per-family templates in `hub/templates/`.

The card is a `huggingface_hub.ModelCard`: YAML metadata from `ModelCardData` (`library_name: peft`, `base_model`,
tags, datasets, `pipeline_tag`, `model-index` from `EvalResult`s), then Markdown from a Jinja template. Each method
family has a template extending `base.md` (`coop_family.md`, `deep_prompt.md`, `dpl.md`, `generic.md`); which one a
method uses, its summary and its papers are in `methods.py`. See `hub_cards/README.md`.
"""

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from peft import LoraConfig, PeftConfig, PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from ..finite import check_finite
from ..model_refs import TOY_CLIP_NAME, portable_model_reference
from ..tuners.base import DEFAULT_TEMPLATE, VLPromptConfig, check_weights_file
from .methods import BIBTEX, card_key, method_card

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
PLACEHOLDER_REPO_ID = "your-username/your-prompts"
UNKNOWN_BASE = "<the CLIP checkpoint this adapter was trained on>"
_CLASS_SENTINEL = "CLASSNAME"

# (key in all_results.json, model-index metric type, display name)
METRICS = (
    ("accuracy", "accuracy", "Accuracy"),
    ("base_accuracy", "accuracy", "Base accuracy"),
    ("new_accuracy", "accuracy", "New accuracy"),
    ("hm", "harmonic_mean", "Harmonic mean (base/new)"),
)
PROTOCOLS = {
    "base2new": "base-to-new generalization (trained on the base half of the classes, evaluated on base and new)",
    "fewshot": "few-shot classification",
    "few_shot": "few-shot classification",
    "cross_dataset": "cross-dataset transfer",
    "domain_generalization": "domain generalization",
}
# adapter_config.json keys that say nothing about the method
_BORING_CONFIG_KEYS = {
    "auto_mapping",
    "base_model_name_or_path",
    "inference_mode",
    "peft_version",
    "revision",
    "target_modules",
    "task_type",
}
_SECRET_WORDS = ("token", "password", "secret", "api_key", "apikey")


# peft_vlprompt's adapters, and peft's LoRA as CLIP-LoRA trains it (`--method clip_lora`)
CARD_CONFIGS = (VLPromptConfig, LoraConfig)


def adapter_config(model: PeftModel, adapter_name: str | None = None) -> tuple[str, VLPromptConfig]:
    """(adapter name, config) of the adapter a card describes (the active one by default)."""
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"`model` must be a peft `PeftModel` with a peft_vlprompt adapter, got {type(model).__name__}; unwrap "
            "it first (e.g. `accelerator.unwrap_model(model)`)"
        )
    name = adapter_name or model.active_adapter
    config = model.peft_config.get(name)
    if not isinstance(config, CARD_CONFIGS):
        raise TypeError(
            f"adapter {name!r} is a {type(config).__name__}, not a peft_vlprompt config; cards describe "
            "peft_vlprompt adapters only"
        )
    return name, config


def adapter_facts(
    model_or_folder: PeftModel | str | os.PathLike, adapter_name: str | None = None
) -> tuple[VLPromptConfig, int, int]:
    """(config, number of saved parameters, number of saved tensors) of a `PeftModel`'s adapter or a saved folder."""
    if not isinstance(model_or_folder, (str, os.PathLike)):
        name, config = adapter_config(model_or_folder, adapter_name)
        state = get_peft_model_state_dict(model_or_folder, adapter_name=name, save_embedding_layers=False)
        return config, sum(t.numel() for t in state.values()), len(state)
    folder = Path(model_or_folder)
    config = PeftConfig.from_pretrained(str(folder))
    if not isinstance(config, CARD_CONFIGS):
        raise TypeError(f"{str(folder)!r} holds a {type(config).__name__}; cards describe peft_vlprompt adapters "
                        "(and CLIP-LoRA's LoraConfig) only")  # fmt: skip
    check_weights_file(folder / SAFETENSORS_WEIGHTS_NAME)  # a corrupt file fails naming itself
    with safe_open(folder / SAFETENSORS_WEIGHTS_NAME, framework="pt") as weights:
        shapes = [weights.get_slice(key).get_shape() for key in weights.keys()]
    return config, sum(math.prod(shape) for shape in shapes), len(shapes)


def method_of(config: VLPromptConfig) -> str:
    """The method name of a config: its `peft_type`, lower-cased (`"coop"`, `"prograd_coop"`, ...)."""
    return str(getattr(config.peft_type, "value", config.peft_type)).lower()


def is_hub_id(name: str | None) -> bool:
    """True for strings that look like `owner/name` Hub ids rather than local paths."""
    if not name or os.path.exists(name) or os.path.isabs(name) or name.startswith((".", "~")):
        return False
    return 0 < name.count("/") <= 1 and " " not in name


def safe_training_config(training_config: Mapping | None) -> dict:
    """JSON-friendly copy without `None` values and without anything that looks like a credential."""
    clean = {}
    for key, value in (training_config or {}).items():
        if value is None or any(word in str(key).lower() for word in _SECRET_WORDS):
            continue
        clean[str(key)] = value if isinstance(value, (bool, int, float, str, list, dict)) else str(value)
    return clean


def _number(value) -> str:
    if _is_number(value):
        return f"{float(value):.2f}"
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _mapping(value) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def result_rows(results: Mapping | None, dataset: str | None) -> list[dict]:
    """Rows (dataset, key, metric type, name, value, zero-shot value, in model-index?) of an `all_results.json` dict.

    Top-level metrics belong to `dataset`. Cross-dataset / domain-generalization runs give one row per target from
    `target_accuracy` (`{target: accuracy}`) and a table-only row for `average_target_accuracy`; a nested dict of
    metrics under any other key also becomes rows of that dataset. `results["zero_shot"]` (same layout) is matched
    row by row. Unknown keys and non-numeric values are ignored, so partial results files render.
    """
    if not results:
        return []
    zero_shot = _mapping(results.get("zero_shot"))
    groups = [(dataset or "custom", results, zero_shot)]
    zs_targets = _mapping(zero_shot.get("target_accuracy"))
    for target, value in _mapping(results.get("target_accuracy")).items():
        groups.append((str(target), {"accuracy": value}, {"accuracy": zs_targets.get(target)}))
    for key, value in results.items():
        if key not in ("zero_shot", "target_accuracy") and any(m in _mapping(value) for m, _, _ in METRICS):
            groups.append((str(key), value, _mapping(zero_shot.get(key))))
    rows = []
    for group_dataset, metrics, zs in groups:
        for key, metric_type, name in METRICS:
            if _is_number(metrics.get(key)):
                zs_value = zs.get(key) if _is_number(zs.get(key)) else None
                rows.append(dict(dataset=group_dataset, type=metric_type, name=name, value=metrics[key], zs=zs_value))
    if _is_number(results.get("average_target_accuracy")):
        zs_value = zero_shot.get("average_target_accuracy")
        rows.append(
            dict(
                dataset="average over targets",
                type="accuracy",
                name="Accuracy",
                value=results["average_target_accuracy"],
                zs=zs_value if _is_number(zs_value) else None,
                in_index=False,  # not one dataset
            )
        )
    return rows


def results_table(rows: list[dict], results: Mapping) -> str:
    """Markdown table of the rows, with a line saying protocol, shots and seed."""
    if not rows:
        return ""
    facts = []
    protocol = results.get("protocol")
    if protocol:
        facts.append(f"Protocol: {PROTOCOLS.get(str(protocol), str(protocol))}.")
    if results.get("shots") is not None:
        facts.append(f"{results['shots']} shots per class.")
    if results.get("seed") is not None:
        facts.append(f"Seed {results['seed']}.")
    facts.append("Accuracy in %, on the test split.")
    has_zs = any(row["zs"] is not None for row in rows)
    lines = [" ".join(facts), ""]
    lines.append("| dataset | metric | this adapter |" + (" zero-shot CLIP |" if has_zs else ""))
    lines.append("|---|---|---|" + ("---|" if has_zs else ""))
    for row in rows:
        cells = [row["dataset"], row["name"], _number(row["value"])]
        if has_zs:
            cells.append("" if row["zs"] is None else _number(row["zs"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_results(rows: list[dict], results: Mapping) -> list[EvalResult]:
    protocol = results.get("protocol")
    task_name = PROTOCOLS.get(str(protocol), str(protocol)) if protocol else "image classification"
    return [
        EvalResult(
            task_type="image-classification",
            task_name=task_name,
            dataset_type=row["dataset"],
            dataset_name=row["dataset"],
            dataset_split="test",
            metric_type=row["type"],
            metric_name=row["name"],
            metric_value=row["value"],
        )
        for row in rows
        if row.get("in_index", True)
    ]


def example_prompt(config: VLPromptConfig, template: str) -> str:
    """The text fed to the text tower for a class, with `{class}` for the class name."""
    try:
        text = config.prompt_texts([_CLASS_SENTINEL], template)[0]
    except Exception:  # a method whose prompts cannot be shown for a single class
        return template.format("{class}")
    return text.replace(_CLASS_SENTINEL, "{class}")


def _py(value) -> str:
    """A Python literal of a string or list of strings, double-quoted (JSON's escapes are valid Python)."""
    return json.dumps(value, ensure_ascii=False)


def base_line(base_model: str) -> str:
    """`base = ...` of the usage snippet; the shipped toy CLIP is found through the installed package."""
    if base_model == TOY_CLIP_NAME:
        return "base = toy_clip_path()  # the toy CLIP shipped with peft_vlprompt"
    return f"base = {_py(base_model)}"


def usage_code(
    repo_id: str, base_model: str, classnames: Sequence[str], template: str | None, class_specific: bool
) -> tuple[str, str]:
    """The card's two Python snippets: load + `PromptClassifier`, then the zero-shot pipeline."""
    names = list(classnames)
    comment = "in training label order" if class_specific else "any class names work"
    shown = names if class_specific or len(names) <= 20 else names[:10]
    if len(shown) < len(names):
        comment = f"first 10 of the {len(names)} training classes; {comment}"
    template_arg = f", template={_py(template)}" if template and template != DEFAULT_TEMPLATE else ""
    load = "\n".join(
        [
            "import peft_vlprompt  # registers the peft_vlprompt methods with peft",
            "from peft import PeftModel",
            "from PIL import Image",
            "from peft_vlprompt.backbones import load_backbone",
            *(["from peft_vlprompt.toy import toy_clip_path"] if base_model == TOY_CLIP_NAME else []),
            "",
            base_line(base_model),
            "base_model, tokenizer, image_processor = load_backbone(base)  # AutoModel + the family's tokenizer",
            f"model = PeftModel.from_pretrained(base_model, {_py(repo_id)}).eval()",
            f"classnames = {_py(shown)}  # {comment}",
            "classifier = peft_vlprompt.PromptClassifier(",
            f"    model, tokenizer, classnames{template_arg}, image_processor=image_processor",
            ")",
            'print(classifier.predict([Image.open("image.jpg").convert("RGB")]))',
        ]
    )
    pipe = "\n".join(
        [
            "from peft_vlprompt.hub import prompt_pipeline",
            "",
            f"classify = prompt_pipeline(model, tokenizer, image_processor{template_arg})",
            'print(classify(Image.open("image.jpg").convert("RGB"), candidate_labels=classnames))',
        ]
    )
    return load, pipe


def check_finite_results(results: Mapping | None, where: str = "results") -> None:
    """Raise a `ValueError` naming the key if any number in `results` (nested dicts/lists) is NaN or inf."""
    items = results.items() if isinstance(results, Mapping) else enumerate(results or ())
    for key, value in items:
        path = f"{where}[{key!r}]"
        if isinstance(value, (Mapping, list, tuple)):
            check_finite_results(value, path)
        elif _is_number(value) and not math.isfinite(float(value)):
            raise ValueError(f"`{path}` is {value}: non-finite results are not written into a card or published")


def check_publishable(
    model: PeftModel | str | os.PathLike, results: Mapping | None = None, adapter_name: str | None = None
) -> None:
    """Before any upload: the adapter's tensors (of a `PeftModel` or a saved folder) and the results must be finite
    (raises `ValueError` naming the tensor, file or result)."""
    if isinstance(model, (str, os.PathLike)):
        weights = Path(model) / SAFETENSORS_WEIGHTS_NAME
        check_weights_file(weights)
        check_finite(load_file(str(weights)).items(), f"refusing to publish {weights}")
    else:
        adapter_facts(model, adapter_name)  # reads the state dict, which refuses non-finite tensors
    check_finite_results(results)


def _first(*values):
    return next((v for v in values if v not in (None, "")), None)


def render_card(
    model: PeftModel | str | os.PathLike,
    *,
    repo_id: str | None = None,
    results: Mapping | None = None,
    training_config: Mapping | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    classnames: Sequence[str] | None = None,
    template: str | None = None,
    adapter_name: str | None = None,
    warn_local_base: bool = True,
) -> ModelCard:
    """Render the model card of `model`'s active (or `adapter_name`) peft_vlprompt adapter.

    Args:
        model: the `PeftModel` whose adapter is shared, or a folder it was saved to (no base model needed).
        repo_id: the Hub repository, used in the usage snippet and as the model-index name.
        results: the training script's `all_results.json` dict (missing keys are fine).
        training_config: the training arguments (`vars(args)`); credentials are dropped.
        dataset: dataset name; defaults to `results["dataset"]` or `training_config["dataset"]`.
        base_model: Hub id of the base CLIP; defaults to the adapter config's `base_model_name_or_path`.
        classnames: class names for the usage snippet; defaults to `training_config["classnames"]`.
        template: the hand-crafted template used in training; defaults to `results["template"]`, then
            `training_config["template"]` (only strings containing `{}` count; a template-table name is skipped).
        adapter_name: the adapter to describe (default: the active one).
        warn_local_base: log a warning when the base model is not a Hub id (the card and `AutoPeftModel` then point
            to a local folder); the training loop's local card turns it off.
    """
    results = dict(results or {})
    check_finite_results(results)
    training_config = safe_training_config(training_config)
    config, n_params, n_tensors = adapter_facts(model, adapter_name)
    method = method_of(config)
    variant = card_key(method, config)
    info = method_card(variant)
    dataset = _first(dataset, results.get("dataset"), training_config.get("dataset"))
    base_model = portable_model_reference(_first(base_model, config.base_model_name_or_path))
    # the results hold the resolved template string; the arguments may hold a template table name instead
    templates = (template, results.get("template"), training_config.get("template"))
    template = next((t for t in templates if isinstance(t, str) and "{}" in t), DEFAULT_TEMPLATE)
    hub_base = base_model if is_hub_id(base_model) and base_model != TOY_CLIP_NAME else None
    if hub_base is None and base_model != TOY_CLIP_NAME and warn_local_base:
        logger.warning(
            "base model %r is not a Hub id; pass `base_model=` (e.g. 'openai/clip-vit-base-patch16') so the card "
            "and AutoPeftModel point to it",
            base_model,
        )
    # per-class context (not shared CSC, which is one context for all classes) ties the prompts to the label order
    class_specific = bool(getattr(config, "per_class_context", getattr(config, "class_specific", False)))
    n_classes = getattr(config, "n_classes", None)
    classnames = _first(classnames, training_config.get("classnames"), results.get("classnames"))
    if not classnames:
        classnames = [f"class_{i}" for i in range(n_classes)] if class_specific and n_classes else ["cat", "dog"]
    if repo_id is None and isinstance(model, (str, os.PathLike)):
        repo_id = os.path.abspath(model)  # a local adapter's card loads it from where it is, as written
    repo_id = repo_id or PLACEHOLDER_REPO_ID

    rows = result_rows(results, dataset)
    evals = eval_results(rows, results)
    tags = ["clip", "prompt-learning", "peft_vlprompt", method]
    if variant != method:  # e.g. "maple" for MaPLe-coupled deep prompts, "dpl" for prefix deep prompts
        tags.append("dpl" if variant == "deep_prompt:prefix" else variant)
    if results.get("method") and str(results["method"]).lower() != method:
        tags.append(str(results["method"]).lower())
    if hub_base:
        tags.append(f"base_model:adapter:{hub_base}")
    card_data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        tags=tags,
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"] if evals else None,
        pipeline_tag="zero-shot-image-classification",
        model_name=repo_id.split("/")[-1],
        eval_results=evals or None,
    )
    config_dict = {
        k: getattr(v, "value", v)
        for k, v in config.to_dict().items()
        if v is not None and k not in _BORING_CONFIG_KEYS
    }
    load_code, pipe_code = usage_code(repo_id, base_model or UNKNOWN_BASE, classnames, template, class_specific)
    short_base = (base_model or "CLIP").rstrip("/").split("/")[-1]
    subject = info.title if "prompt" in info.title.lower() else f"{info.title} prompts"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    content = env.get_template(f"{info.family}.md").render(
        card_data=card_data.to_yaml(),
        title=f"{subject} for {short_base}" + (f" on {dataset}" if dataset else ""),
        method=method,
        search_stage=method == "dpl",
        subject=subject,
        method_summary=info.summary,
        base_model_link=f"[`{hub_base}`](https://huggingface.co/{hub_base})" if hub_base else f"`{short_base}`",
        dataset=dataset,
        n_params=f"{n_params:,}",
        n_tensors=n_tensors,
        n_ctx=getattr(config, "n_ctx", None),
        class_specific=class_specific,
        n_classes=n_classes,
        example_prompt=example_prompt(config, template),
        usage_code=load_code,
        pipeline_code=pipe_code,
        results_table=results_table(rows, results),
        training_config=json.dumps(training_config, indent=2, sort_keys=True, default=str) if training_config else "",
        adapter_config=json.dumps(config_dict, indent=2, sort_keys=True, default=str),
        citations="\n\n".join(BIBTEX[key] for key in info.papers),
    )
    return ModelCard(content)
