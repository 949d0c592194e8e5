"""`--select_on`: "last" keeps the final state; "validation" keeps the epoch with the best validation accuracy (training
classes only, ties to the earlier epoch, the final state of a run stopped inside an epoch included) and records it."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import CLIPImageProcessor

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.baselines.selection import EpochSelector
from peft_vlprompt.data import load_task
from peft_vlprompt.training import main
from peft_vlprompt.training.args import TrainArguments
from tests.test_training_fixtures import base_args, register_tiny_dataset, save_tiny_model
from tests.tiny import tiny_clip, tokenizer


class ScriptedEvaluator:
    """Returns the next accuracy of a script for each `run` (the selector must not care where they come from)."""

    def __init__(self, accuracies):
        self.accuracies = list(accuracies)

    def run(self, zero_shot):
        assert zero_shot is False
        return {"validation": {"accuracy": self.accuracies.pop(0)}}


def run_selector(on: str, accuracies, epochs: int, per_epoch: int = 3, extra_steps: int = 0):
    """Train-like loop: the context is set to the epoch number at each epoch end; returns (record, model, states)."""
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=2))
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    selector = EpochSelector(TrainArguments(select_on=on), None, lambda: ScriptedEvaluator(accuracies))
    states = {}
    for epoch in range(epochs):
        with torch.no_grad():
            ctx.fill_(float(epoch + 1))
        states[epoch + 1] = ctx.detach().clone()
        selector.after_epoch(epoch, (epoch + 1) * per_epoch, model)
    step = epochs * per_epoch
    if extra_steps:  # stopped inside the next epoch
        with torch.no_grad():
            ctx.fill_(99.0)
        states[epochs + 1] = ctx.detach().clone()
        step += extra_steps
    return selector.finish(model, step, per_epoch), ctx.detach().clone(), states


def test_validation_keeps_the_first_best_epoch_and_restores_it():
    record, ctx, states = run_selector("validation", [50.0, 75.0, 75.0, 60.0], epochs=4)
    assert record["selected_on"] == "validation" and record["selected_epoch"] == 2
    assert record["validation_accuracy"] == 75.0
    assert [s["accuracy"] for s in record["validation_by_epoch"]] == [50.0, 75.0, 75.0, 60.0]
    assert torch.equal(ctx, states[2])


def test_final_state_of_a_run_stopped_inside_an_epoch_is_a_candidate():
    record, ctx, states = run_selector("validation", [50.0, 60.0, 80.0], epochs=2, extra_steps=1)
    assert record["selected_epoch"] == 3 and torch.equal(ctx, states[3])
    assert [s["step"] for s in record["validation_by_epoch"]] == [3, 6, 7]


def test_last_keeps_the_final_state_and_never_evaluates():
    record, ctx, states = run_selector("last", [], epochs=3)  # an evaluation would pop from an empty script
    assert record == {"selected_on": "last", "selected_epoch": 3}
    assert torch.equal(ctx, states[3])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("select_on") / "model")


def _val_accuracy(model_dir, adapter_dir, task) -> float:
    """Hand evaluation of one saved CoOp state on the validation images (PIL in, class indices out)."""
    model = PeftModel.from_pretrained(tiny_clip(), adapter_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    clf = PromptClassifier(model, tokenizer(), task.classnames, image_processor=processor)
    val = task.val
    predicted = clf.predict(list(val["image"]), return_index=True)
    return 100.0 * sum(int(p) == int(y) for p, y in zip(predicted, val["label"])) / len(val)


def test_loop_selects_on_validation_and_records_it(model_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["--no_eval_zero_shot", "--select_on", "validation", "--num_epochs", "3", "--lr", "0.05",
            "--checkpointing_steps", "epoch"]  # fmt: skip
    results = main(base_args(model_dir, out, "coop", *args))
    scores = results["validation_by_epoch"]
    assert results["selected_on"] == "validation" and [s["epoch"] for s in scores] == [1, 2, 3]
    accuracies = [s["accuracy"] for s in scores]
    assert results["selected_epoch"] == 1 + accuracies.index(max(accuracies))
    assert json.loads((out / "all_results.json").read_text())["selected_epoch"] == results["selected_epoch"]
    # each epoch's checkpoint, scored by hand on the validation split of the training (base) classes
    task = load_task(register_tiny_dataset(), None, shots=4, seed=1, subsample="base")
    assert task.classnames == ["bird", "cat"]  # base classes only; the test split is never read here
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    for epoch, score in enumerate(scores):
        folder = out / "checkpoints" / f"checkpoint_{epoch}"
        adapter = tmp_path / f"epoch{epoch + 1}"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_bytes((out / "adapter" / "adapter_config.json").read_bytes())
        (adapter / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
        assert _val_accuracy(model_dir, adapter, task) == pytest.approx(score["accuracy"], abs=1e-3)
        same = all(torch.equal(v, load_file(folder / "adapter_model.safetensors")[k]) for k, v in saved.items())
        assert same == (epoch + 1 == results["selected_epoch"]) or accuracies.count(max(accuracies)) > 1


@pytest.mark.parametrize(
    "method,extra,match",
    [("zeroshot", [], "would be ignored"), ("promptsrc", [], "GPA"),
     ("coop", ["--resume_from_checkpoint", "latest"], "cannot resume")],
)  # fmt: skip
def test_validation_selection_is_refused_where_it_cannot_apply(model_dir, tmp_path, method, extra, match):
    with pytest.raises(ValueError, match="select_on.*" + match):
        main(base_args(model_dir, tmp_path / "x", method, "--select_on", "validation", *extra))
