"""One validation for every value: every field of every method's config, of the deep-prompt presets and of the training
arguments gets a wrong type, an out-of-range value, NaN and an unknown sibling field, and each must fail with an error
naming the field and the value. The bad values and the rules they break are restated here by hand (not read from the
library), and a field added without an entry below fails `test_every_field_has_a_row`."""

import dataclasses
import functools
import json
import math
import typing

import pytest
from peft.config import PeftConfig

import peft_vlprompt as vlp
from peft_vlprompt.training import TrainArguments
from peft_vlprompt.training.inputs import apply_config_file
from peft_vlprompt.training.parser import parse_args

# valid companions each config needs besides the field under test
CONFIGS = {
    vlp.CoOpConfig: {},
    vlp.CoCoOpConfig: {},
    vlp.ProGradCoOpConfig: {},
    vlp.KgCoOpConfig: {},
    vlp.DeepPromptConfig: {"text_lengths": [1, 0], "vision_lengths": [0, 1]},
    vlp.PromptSRCConfig: {},
    vlp.RestoreAdapterConfig: {},
    vlp.DPLSearchConfig: {},
}

# field -> a value of the right type that breaks the field's rule (by hand, from the docs of each field)
OUT_OF_RANGE = {
    # CoOp family
    "n_ctx": 0,
    "ctx_init_split": "letters",
    "class_specific_init": "random",
    "n_classes": 0,
    "class_token_position": "left",
    "init_std": 0.0,
    "ctx_init_token_ids": [49406, -1],
    "placeholder_token_id": -1,
    "token_ids_from": "bert",
    "meta_net_reduction": 0,
    "lambda_": -0.5,
    "temperature": 0.0,
    "teacher_template": "a photo without a slot",
    "kg_weight": -1.0,
    # deep prompts, PromptSRC, RESTORE
    "text_lengths": [1, -1],
    "vision_lengths": [-2, 1],
    "mode": "deep",
    "coupling": "both",
    "text_template": "a photo without a slot",
    "text_input": "mean",
    "text_loss_weight": -1.0,
    "image_loss_weight": -1.0,
    "gpa_std": 0.0,
    "text_ratio": -0.1,
    "vision_ratio": -0.1,
    "text_ratio_step": -0.1,
    "vision_ratio_step": -0.1,
    "fs_weight": -1.0,
    "fs_definition": "cosine",
    "adapter_hidden_mult": 0,
    # DPL search
    "text_candidates": [-1, 0],
    "vision_candidates": [0, -3],
    "prompt_init": "uniform",
    "alpha_init_std": -1.0,
    "mixing": "fast",
}
# fields with no out-of-range value of their type (free text, switches, any real number)
NO_RANGE = {
    "target_modules": "module names filled in from the backbone",
    "modules_to_save": "free module names",
    "ctx_init": "any words initialise the context",
    "pad_ctx_init": "a switch",
    "class_specific": "a switch",
    "frozen_suffix": "any words",
    "share_prompts": "a switch",
    "gpa_mean": "any epoch (a mean outside 1..E weights the first or last epochs)",
}

TRAIN_OUT_OF_RANGE = {
    "shots": 0,
    "seed": -1,
    "protocol": "zero_shot",
    "train_crop_scale": [0.0, 1.0],
    "num_epochs": 0,
    "lr": 0.0,
    "batch_size": 0,
    "eval_batch_size": 0,
    "gradient_accumulation_steps": 0,
    "momentum": 1.5,
    "weight_decay": -1e-4,
    "warmup_epochs": -1,
    "warmup_lr": -1e-5,
    "lr_granularity": "minute",
    "max_grad_norm": 0.0,
    "max_train_steps": 0,
    "mixed_precision": "fp8",
    "dtype": "half",
    "attn_implementation": "flash",
    "torch_threads": 0,
    "kd_weight": -1.0,
    "kd_temperature": 0.0,
    "prograd_lambda": -0.5,
    "kgcoop_weight": 0.0,
    "select_on": "best",
    "num_views": 0,
    "class_chunk_size": 0,
    "text_memory_budget_mb": 0,
    "dataloader_num_workers": -1,
    "checkpointing_steps": "often",
    "checkpoints_total_limit": 0,
    "logging_steps": 0,
    "adapter_kwargs": "[8]",
}
TRAIN_NO_RANGE = {  # names and paths are checked against the registry / the disk (tests/test_cli.py)
    "method", "config", "dataset", "data_dir", "template", "eval_datasets", "model", "cpu", "cache_image_features",
    "eval_zero_shot", "output_dir", "resume_from_checkpoint", "with_tracking", "report_to", "push_to_hub",
    "hub_model_id", "hub_private", "verify_images", "gradient_checkpointing", "torch_compile",
    # a custom dataset's source, columns and class names are checked on disk / when loading (test_cli_datasets.py);
    # streaming is refused whatever its value; the tracker project is any name
    "dataset_name", "dataset_config_name", "train_dir", "validation_dir", "image_column", "label_column",
    "class_names_file", "streaming", "tracker_project_name",
}  # fmt: skip


def wrong_type(annotation):
    """A value of another type than the field's (a list field gets a string, a number field a word, ...)."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = typing.get_origin(kinds[0]) or kinds[0]
    return {int: "three", float: "high", bool: "yes", str: 3, list: "1 2"}[kind]


def own_fields(cls):
    hints = typing.get_type_hints(cls)
    skip = set(PeftConfig.__dataclass_fields__)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip]


CASES = [(cls, name, ann) for cls in CONFIGS for name, ann in own_fields(cls)]


def assert_names(error, field, value):
    text = str(error.value)
    assert f"`{field}`" in text, text
    shown = "nan" if isinstance(value, float) and math.isnan(value) else None
    if isinstance(value, list):  # a list is named by its bad element
        shown = next(repr(v) for v in value if not isinstance(v, int) or v < 0 or v > 49407 or isinstance(v, bool))
        shown = shown if f"{shown} at index" in text or shown in text else repr(value)
    assert (shown or repr(value)) in text or str(value) in text, text


def test_every_field_has_a_row():
    for cls, name, _ in CASES:
        assert name in OUT_OF_RANGE or name in NO_RANGE, f"{cls.__name__}.{name} has no row in the table"
    for f in dataclasses.fields(TrainArguments):
        if f.metadata.get("cli", True):
            assert f.name in TRAIN_OUT_OF_RANGE or f.name in TRAIN_NO_RANGE, f"TrainArguments.{f.name} has no row"


@pytest.mark.parametrize("cls,name,annotation", CASES, ids=[f"{c.__name__}.{n}" for c, n, _ in CASES])
def test_every_config_field_rejects_bad_values(cls, name, annotation):
    base = CONFIGS[cls]
    bad = [wrong_type(annotation), float("nan")]
    if name in OUT_OF_RANGE:
        bad.append(OUT_OF_RANGE[name])
    for value in bad:
        with pytest.raises(ValueError) as error:  # a wrong type is a `TypeError` that is also a `ValueError`
            cls(**{**base, name: value})
        assert_names(error, name, value)
    # the same values through the JSON path (`adapter_config.json`, --config): the same errors
    saved = json.loads(json.dumps(cls(**base).to_dict(), default=str))
    for value in bad:
        with pytest.raises(ValueError) as error:
            cls.from_peft_type(**{**saved, name: value})
        assert_names(error, name, value)
    # an unknown sibling field (a typo of this one) is named, with the real field as the suggestion
    typo = name[:-1] if name[:-1] not in cls.__dataclass_fields__ else name + "s"
    with pytest.raises(ValueError, match=rf"unknown field '{typo}' \(did you mean '{name}'"):
        cls.from_peft_type(**{**saved, typo: saved.get(name)})
    with pytest.raises(TypeError, match=typo):
        cls(**{**base, typo: 1})


@pytest.mark.parametrize("cls", list(CONFIGS), ids=lambda c: c.__name__)
def test_a_saved_adapter_config_with_a_bad_value_fails_the_same_way(cls, tmp_path):
    cls(**CONFIGS[cls]).save_pretrained(str(tmp_path))
    file = tmp_path / "adapter_config.json"
    data = json.loads(file.read_text())
    name = next(n for n, _ in own_fields(cls) if n in OUT_OF_RANGE and n in data)
    file.write_text(json.dumps({**data, name: float("nan")}).replace("NaN", "NaN"))
    with pytest.raises(ValueError, match=rf"`{name}` must be"):
        cls.from_pretrained(str(tmp_path))
    file.write_text(json.dumps({**data, name + "_typo": 1}))
    with pytest.raises(ValueError, match=rf"unknown field '{name}_typo'"):
        cls.from_pretrained(str(tmp_path))


PRESETS = {
    vlp.ivlp_preset: ("n_ctx_text", "n_ctx_vision", "depth"),
    vlp.vpt_deep_preset: ("n_ctx_vision", "depth"),
    vlp.deep_language_preset: ("n_ctx_text", "depth"),
    vlp.maple_preset: ("n_ctx", "depth"),
    vlp.promptsrc_preset: ("n_ctx_text", "n_ctx_vision", "depth"),
    functools.partial(vlp.restore_preset, "dtd"): ("n_ctx", "depth"),
}


@pytest.mark.parametrize("preset", list(PRESETS), ids=lambda p: getattr(p, "__name__", None) or p.func.__name__)
def test_preset_arguments_reject_bad_values(preset):
    for name in PRESETS[preset]:
        for value in ("two", float("nan"), -1):
            with pytest.raises(ValueError) as error:
                preset(12, **{name: value})
            assert_names(error, name, value)
    with pytest.raises(TypeError, match="depthh"):
        preset(12, depthh=3)


TRAIN_CASES = [(f.name, typing.get_type_hints(TrainArguments)[f.name]) for f in dataclasses.fields(TrainArguments)
               if f.metadata.get("cli", True)]  # fmt: skip


@pytest.mark.parametrize("name,annotation", TRAIN_CASES, ids=[n for n, _ in TRAIN_CASES])
def test_every_training_argument_rejects_bad_values(name, annotation, tmp_path):
    bad = [wrong_type(annotation), float("nan")] + ([TRAIN_OUT_OF_RANGE[name]] if name in TRAIN_OUT_OF_RANGE else [])
    for value in bad:
        with pytest.raises(ValueError) as error:
            TrainArguments(**{name: value})
        assert_names(error, name, value)
    if name == "config":
        return
    # the same values from a --config file: the same errors, naming the file too
    adapter = vlp.CoOpConfig().to_dict()
    for value in bad:
        file = tmp_path / "run.json"
        file.write_text(json.dumps({"adapter_config": adapter, name: value}, default=str))
        with pytest.raises(ValueError) as error:
            apply_config_file(parse_args(["--config", str(file)]))
        assert str(file) in str(error.value)
        assert_names(error, name, value)
    # an unknown sibling (a typo) in the file is named with the closest real argument
    typo = name[:-1]
    file.write_text(json.dumps({"adapter_config": adapter, typo: 1}, default=str))
    with pytest.raises(ValueError, match=rf"{file}.*unknown field '{typo}' \(did you mean '{name}'"):
        apply_config_file(parse_args(["--config", str(file)]))
