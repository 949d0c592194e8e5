"""Nothing non-finite is trained on silently, saved, evaluated as a result or published (issue 11, item 5).

Each fault is produced as a user would meet it (a diverging learning rate, NaN pixel values, a NaN adapter, a NaN
result) and each test asserts the error names the thing (step, term or tensor, input) and that nothing was written.
"""

import math

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.finite import check_training_step
from peft_vlprompt.hub import push_prompts, render_card
from peft_vlprompt.training import main
from tests.test_training_fixtures import base_args, save_tiny_model
from tests.tiny import pixels, tiny_clip, tokenizer

CTX = "text_model.embeddings.token_embedding.coop_ctx"


def nan_coop_model():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    with torch.no_grad():
        dict(model.named_parameters())[f"base_model.model.{CTX}.default"][1, 3] = float("nan")
    return model


def test_a_diverging_run_stops_at_the_step_and_saves_nothing_non_finite(tmp_path):
    # lr 1e38 is a valid positive float: the prompts reach ~1e36 after step 1 and the loss overflows at a later step
    out = tmp_path / "run"
    args = base_args(save_tiny_model(tmp_path / "m"), out, "coop", "--lr", "1e38", "--warmup_epochs", "0",
                     "--checkpointing_steps", "1")  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"training stopped at optimizer step \d+: `loss term ce` \(1 of 1 "
                                                 r"values NaN/inf\).*learning rate \(1e\+38\)") as info:  # fmt: skip
        main(args)
    step = int(str(info.value).split("optimizer step ")[1].split(":")[0])
    assert step >= 2  # step 1 itself was finite
    # no final adapter, no results; every checkpoint written before the failure holds finite prompts
    assert not (out / "adapter").exists() and not (out / "all_results.json").exists()
    checkpoints = sorted((out / "checkpoints").glob("checkpoint_*"))
    assert len(checkpoints) == step - 1
    for folder in checkpoints:
        for name, tensor in load_file(str(next(folder.glob("*.safetensors")))).items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), (folder, name)


def test_the_step_check_names_the_parameter_an_infinite_learning_rate_broke():
    # what `--lr inf` does in one SGD step, checked with the loop's own step check
    ctx = torch.nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.SGD([ctx], lr=float("inf"))
    loss = (ctx**2).sum()
    loss.backward()
    opt.step()
    with pytest.raises(FloatingPointError, match=r"optimizer step 7: the optimizer step made `prompt.ctx` \(6 of 6 "
                                                 r"values NaN/inf\) \(loss and gradients were finite; learning rate "
                                                 r"inf\)"):  # fmt: skip
        check_training_step(7, {"ce": loss.detach()}, [("prompt.ctx", ctx)], check_grads=True, lr=float("inf"))
    # a NaN gradient with a finite loss is named as such; under fp16 loss scaling inf gradients are the scaler's
    ctx2 = torch.nn.Parameter(torch.ones(2))
    ctx2.grad = torch.tensor([1.0, float("inf")])
    with pytest.raises(FloatingPointError, match=r"`gradient of p` \(1 of 2 values NaN/inf\) \(the loss was finite\)"):
        check_training_step(1, {"ce": torch.tensor(0.5)}, [("p", ctx2)], check_grads=True)
    check_training_step(1, {"ce": torch.tensor(0.5)}, [("p", ctx2)], check_grads=False)


def test_nan_pixel_values_raise_instead_of_answering_class_0():
    clf = PromptClassifier(get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4)), tokenizer(), ["cat", "dog"]).eval()
    images = pixels(3)
    assert clf(images).isfinite().all()
    images[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"`pixel_values` \(1 of 9216 values NaN/inf\)"):
        clf(images)
    # features computed elsewhere (the evaluator's cache) are checked where logits are made
    feats = clf.image_features(pixels(2))
    feats[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"the logits cannot be computed: `image_features` \(1 of 48"):
        clf.logits(feats, clf.text_features())


def test_nan_prompts_are_neither_evaluated_nor_saved(tmp_path):
    model = nan_coop_model()
    clf = PromptClassifier(model, tokenizer(), ["cat", "dog"]).eval()
    with pytest.raises(ValueError, match=r"`text_features` \(\d+ of \d+ values NaN/inf\)"):
        clf(pixels(2))
    with pytest.raises(ValueError, match=rf"refusing to save adapter 'default': `{CTX}` \(1 of 128 values NaN/inf\)"):
        model.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append("create_repo")
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        self.calls.append("upload_folder")


def test_push_refuses_a_nan_adapter_or_result_before_creating_the_repository():
    api = RecordingApi()
    with pytest.raises(ValueError, match=rf"refusing to save adapter 'default': `{CTX}`"):
        push_prompts(nan_coop_model(), "me/x", api=api)
    good = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    with pytest.raises(ValueError, match=r"`results\['base_accuracy'\]` is nan: non-finite results are not"):
        push_prompts(good, "me/x", api=api, results={"accuracy": 50.0, "base_accuracy": math.nan})
    with pytest.raises(ValueError, match=r"`results\['zero_shot'\]\['hm'\]` is inf"):
        render_card(good, results={"zero_shot": {"hm": math.inf}})
    assert api.calls == []
    push_prompts(good, "me/x", api=api, results={"accuracy": 50.0})
    assert api.calls == ["create_repo", "upload_folder"]


def test_the_hub_cli_refuses_to_push_a_saved_adapter_with_a_nan(tmp_path, monkeypatch):
    from peft_vlprompt.hub import __main__ as cli

    folder = tmp_path / "adapter"
    get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4)).save_pretrained(folder)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors[f"base_model.model.{CTX}"][0, 0] = float("inf")
    save_file(tensors, str(weights))
    api = RecordingApi()
    monkeypatch.setattr(cli, "HfApi", lambda: api)
    with pytest.raises(ValueError, match=rf"refusing to publish {weights}: `base_model.model.{CTX}` \(1 of 128 "):
        cli.main([str(folder), "--push", "--repo-id", "me/x"])
    assert api.calls == []


def test_a_diverging_dpl_search_stops_at_the_step_and_checkpoints_nothing_non_finite(tmp_path):
    from tests.test_dpl_search import make_search

    search = make_search(tmp_path, lr=1e38, warmup_epochs=0, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"training stopped at optimizer step \d+: `loss term alpha_loss` \(1 "
                                                 r"of 1 values NaN/inf\)"):  # fmt: skip
        search.run()
    assert search.global_step >= 1  # the first step was finite and checkpointed
    checkpoints = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert len(checkpoints) == search.global_step
    for folder in checkpoints:
        state = load_file(folder / "adapter_model.safetensors")
        assert all(torch.isfinite(t).all() for t in state.values()), folder
