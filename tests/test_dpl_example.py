"""The documented DPL flow end to end on a tiny registered dataset and a tiny saved CLIP:
`examples/dpl_search.py` (its `main`) -> `found.json` -> `examples/train.py --method dpl --config found.json`.

Run: `python -m pytest tests/test_dpl_example.py -q`.
"""

import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import CLIPImageProcessor

from peft_vlprompt.data import DatasetSpec, RawSplits, register_dataset, unregister_dataset
from peft_vlprompt.dpl.run import main as search_main
from tests._tensorboard import read_scalars
from tests.tiny import IMAGE_SIZE, tiny_clip

NAME = "dpl_tiny_colors"
CLASSES = ["red", "green", "blue"]


def _split(per_class: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(CLASSES)):
        for _ in range(per_class):
            pixels = rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            pixels[..., label] += 150
            images.append(PILImage.fromarray(pixels))
            labels.append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES)})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def tiny_world(tmp_path):
    def build(data_dir, with_val=True):
        return RawSplits(train=_split(4, 0), val=_split(2, 1) if with_val else None, test=_split(2, 2),
                         classnames=CLASSES)  # fmt: skip

    register_dataset(DatasetSpec(name=NAME, kind="generated", builder=build))
    register_dataset(DatasetSpec(name=NAME + "_noval", kind="generated", builder=lambda d: build(d, with_val=False)))
    clip_dir = tmp_path / "clip"
    tiny_clip().save_pretrained(clip_dir)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(clip_dir)
    yield clip_dir
    unregister_dataset(NAME)
    unregister_dataset(NAME + "_noval")


def test_search_then_train_the_found_config(tiny_world, tmp_path):
    out = tmp_path / "search"
    common = ["--model", str(tiny_world), "--shots", "4", "--batch_size", "2", "--text_candidates", "0", "1", "2",
              "--vision_candidates", "0", "3", "--output_dir", str(out), "--log_every", "1"]  # fmt: skip
    result = search_main(["--dataset", NAME, "--num_epochs", "2", "--warmup_epochs", "0", *common])
    assert result["steps"] == 12  # 12 training images, batch 2, 2 epochs
    found = json.loads((out / "found.json").read_text())
    assert found["peft_type"] == "DEEP_PROMPT" and found["mode"] == "prefix"
    assert [found["text_lengths"], found["vision_lengths"]] == [
        result["chosen_lengths"]["text"],
        result["chosen_lengths"]["vision"],
    ]
    assert (out / "supernet" / "adapter_config.json").is_file() and (out / "checkpoints" / "checkpoint_0").is_dir()
    alphas = json.loads((out / "alphas.json").read_text())
    assert len(alphas["alpha_softmax"]["text"]) == 2 and len(alphas["alpha_softmax"]["vision"][0]) == 2

    # resuming a finished search continues the schedule to a longer run, from the saved state
    longer = search_main(
        ["--dataset", NAME, "--num_epochs", "3", "--warmup_epochs", "0", "--resume_from_checkpoint", "latest", *common]
    )
    assert longer["steps"] == 18
    resume_other = [*common[:3], "2", *common[4:], "--dataset", NAME, "--warmup_epochs", "0"]  # --shots 2, not 4
    with pytest.raises(ValueError, match=r"belongs to another search: `shots` was 4, now 2\."):  # resuming repeats
        search_main([*resume_other, "--resume_from_checkpoint", "latest"])

    from peft_vlprompt.training import main as train_main

    train_out = tmp_path / "train"
    metrics = train_main(["--method", "dpl", "--config", str(out / "found.json"), "--dataset", NAME, "--model", str(tiny_world),
                          "--protocol", "few_shot", "--shots", "4", "--num_epochs", "1", "--batch_size", "4",
                          "--kd_weight", "0.5", "--output_dir", str(train_out)])  # fmt: skip
    assert (train_out / "adapter" / "adapter_config.json").is_file()
    assert (
        json.loads((train_out / "adapter" / "adapter_config.json").read_text())["text_lengths"]
        == found["text_lengths"]
    )
    assert metrics


def test_search_without_validation_split(tiny_world, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"^DPL's search needs validation data \(alpha is learned on it\): dataset 'dpl_tiny_colors_noval' has no val split",
    ):
        search_main(["--dataset", NAME + "_noval", "--model", str(tiny_world), "--output_dir", str(tmp_path)])


def test_bad_search_space_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"^`text_candidates` must contain 0"):
        search_main(
            ["--text_candidates", "2", "4", "--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path)]
        )


def test_a_checkpoint_of_the_older_format_is_refused_before_loading(tmp_path):
    old = tmp_path / "checkpoint-12"  # what earlier versions wrote: torch.save files, never unpickled now
    old.mkdir()
    (old / "search_state.pt").write_bytes(b"not read")
    for resume in ("latest", str(old)):
        with pytest.raises(ValueError, match=r"checkpoint-12 is a DPL search checkpoint of the older format"):
            search_main(["--resume_from_checkpoint", resume, "--output_dir", str(tmp_path)])


def test_a_killed_search_resumes_bit_exactly_and_logs_alpha_to_tensorboard(tiny_world, tmp_path):
    pytest.importorskip("tensorboard")
    common = ["--dataset", NAME, "--model", str(tiny_world), "--shots", "4", "--batch_size", "2", "--num_epochs", "2",
              "--warmup_epochs", "0", "--text_candidates", "0", "1", "2", "--vision_candidates", "0", "3"]  # fmt: skip
    full = search_main([*common, "--output_dir", str(tmp_path / "full")])
    split = tmp_path / "split"
    tracking = ["--with_tracking", "--report_to", "tensorboard", "--log_every", "1"]
    # stopped mid-epoch 1 (6 batches per epoch), as a kill after the checkpoint of step 8 would leave it
    search_main([*common, "--output_dir", str(split), "--max_steps", "8", "--checkpointing_steps", "4", *tracking])
    resumed = search_main([*common, "--output_dir", str(split), "--resume_from_checkpoint", "latest"])
    assert resumed["steps"] == full["steps"] == 12
    alphas = [json.loads((d / "alphas.json").read_text())["alpha"] for d in (tmp_path / "full", split)]
    assert alphas[0] == alphas[1]  # bit-exact: the raw alpha values as JSON floats

    scalars = read_scalars(split / "peft_vlprompt_dpl")
    assert [step for step, _ in scalars["alpha_entropy/text/layer_0"]] == list(range(1, 9))
    assert {tag.split("/")[1] for tag in scalars if tag.startswith("chosen_length/")} == {"text", "vision"}
    last = {tag: values[-1][1] for tag, values in scalars.items()}
    assert all(0 <= last[f"alpha_entropy/text/layer_{i}"] <= np.log(3) + 1e-6 for i in range(2))
    assert all(last[f"chosen_length/vision/layer_{i}"] in (0, 3) for i in range(2))


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--report_to", "tensorbord"], r"`report_to` must be 'all' or comma-separated trackers"),
        (["--checkpoints_total_limit", "0"], r"`checkpoints_total_limit` must be >= 1, got 0"),
        (
            ["--checkpointing_steps", "often"],
            r"^`checkpointing_steps` must be a positive integer or 'epoch', got 'often'$",
        ),
        (["--checkpoint_every", "0"], r"`checkpoint_every` must be >= 1, got 0"),
        (
            ["--checkpoint_every", "2", "--checkpointing_steps", "epoch"],
            r"^`checkpoint_every` is an alias of `checkpointing_steps`: give one, got checkpointing_steps='epoch' and "
            r"checkpoint_every=2$",
        ),
    ],
)
def test_engine_flags_are_checked_before_loading(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        search_main([*argv, "--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path)])
