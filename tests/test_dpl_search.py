"""DPL search loop: one bilevel step by hand, the validation stream, alpha moving and the export, exact resume.

Run: `python -m pytest tests/test_dpl_search.py -q`.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from peft_vlprompt import DPLSearchConfig, PromptClassifier
from peft_vlprompt.dpl import (
    CyclingLoader,
    DPLSearch,
    DPLSearchArguments,
    alpha_summary,
    latest_checkpoint,
    pass_order,
    prompt_lr,
    search_loader,
)
from peft_vlprompt.dpl.batches import TRAIN_STREAM, VAL_STREAM
from peft_vlprompt.tuners.dpl import alpha_parameters, chosen_lengths, prompt_parameters, supernet_layers
from tests.tiny import IMAGE_SIZE, tiny_clip, tokenizer

CLASSNAMES = ["cat", "dog", "bird"]
CONFIG = dict(text_candidates=[0, 1, 2], vision_candidates=[0, 2], prompt_init="normal", init_std=0.3)


class NoisyImages(torch.utils.data.Dataset):
    """Fixed images per item plus noise seeded by `(epoch, index)` (an augmentation that differs per epoch, which the
    resume must replay), for keys `(epoch, index)`; a plain index means epoch 0."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        self.labels = torch.arange(n) % len(CLASSNAMES)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        noise = torch.randn(self.images[i].shape, generator=torch.Generator().manual_seed(1000 * epoch + i))
        return {"pixel_values": self.images[i] + 0.1 * noise, "labels": int(self.labels[i])}


def supernet(seed: int = 0):
    clip = tiny_clip()
    torch.manual_seed(seed)  # the adapter's initialisation
    model = get_peft_model(clip, DPLSearchConfig(**CONFIG))
    return model, PromptClassifier(model, tokenizer(), CLASSNAMES)


def make_search(tmp_path, train_n=8, val_n=3, **kwargs):
    model, clf = supernet()
    args = DPLSearchArguments(
        **{"num_epochs": 2, "batch_size": 2, "lr": 0.05, "alpha_lr": 0.05, "log_every": 1000, **kwargs}
    )
    return DPLSearch(model, clf, NoisyImages(train_n, 1), NoisyImages(val_n, 2), args, tmp_path, keyed_train=True)


# -- batch order ---------------------------------------------------------------------------------------------------
def test_validation_stream_cycles_and_reshuffles():
    items = list(range(5))

    def stream():
        return CyclingLoader(*search_loader(items, 2, lambda xs: xs, seed=3, stream=VAL_STREAM, keyed=False,
                                            drop_last=False))  # fmt: skip

    first = stream()
    passes = [[x for _ in range(3) for x in next(first)] for _ in range(4)]  # 3 batches (2, 2, 1) per pass
    assert all(sorted(p) == items for p in passes)  # every pass sees every item exactly once
    assert len({tuple(p) for p in passes}) > 1  # and the order is re-drawn per pass
    assert passes == [pass_order(5, 3, VAL_STREAM, p) for p in range(4)]
    assert first.state_dict() == {"pass_index": 3, "batch_index": 3}
    again = stream()
    again.load_state_dict({"pass_index": 2, "batch_index": 1})  # resumes through skip_first_batches
    assert next(again) == passes[2][2:4] and next(again) == passes[2][4:] and next(again) == passes[3][:2]


def test_training_batches_drop_last_and_differ_per_epoch():
    loader, sampler = search_loader(list(range(10)), 3, lambda xs: xs, seed=0, stream=TRAIN_STREAM, keyed=False,
                                    drop_last=True)  # fmt: skip
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        epochs.append(list(loader))
        assert [len(b) for b in epochs[-1]] == [3, 3, 3]  # the incomplete last batch is dropped
        assert sum(epochs[-1], []) == pass_order(10, 0, TRAIN_STREAM, epoch)[:9]
    assert epochs[0] != epochs[1]
    assert pass_order(10, 0, TRAIN_STREAM, 0) != pass_order(10, 0, VAL_STREAM, 0)  # the streams are independent


def test_prompt_lr_is_dassl_schedule():
    args = DPLSearchArguments(num_epochs=4, lr=0.1, warmup_epochs=1, warmup_lr=1e-5)
    assert [prompt_lr(e, args) for e in range(4)] == pytest.approx([1e-5, 0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05])


# -- one step by hand --------------------------------------------------------------------------------------------
def hand_search_step(clf, alphas, prompts, train_batch, val_batch, lr=0.05, weight_decay=0.01):
    """One bilevel DPL search step written out, updating `alphas` and `prompts` in place."""
    # alpha: one Adam step (bias-corrected first step: lr * g / (|g| + eps)) on the validation loss
    g = torch.autograd.grad(F.cross_entropy(clf(val_batch["pixel_values"]), val_batch["labels"]), alphas)
    with torch.no_grad():
        for a, ga in zip(alphas, g):
            a -= lr * ga / (ga.abs() + 1e-8)
    # prompts: one SGD step at the *updated* alpha on the training loss (momentum buffer = grad + wd * p)
    g = torch.autograd.grad(F.cross_entropy(clf(train_batch["pixel_values"]), train_batch["labels"]), prompts)
    with torch.no_grad():
        for p, gp in zip(prompts, g):
            p -= lr * (gp + weight_decay * p)


def test_one_step_matches_hand_computed_bilevel_update(tmp_path):
    search = make_search(tmp_path, warmup_epochs=0, momentum=0.9, weight_decay=0.01)
    model, clf = supernet()  # an identical copy to compute the reference on
    alphas, prompts = alpha_parameters(model), prompt_parameters(model)
    from peft_vlprompt.data import collate

    train, val = NoisyImages(8, 1), NoisyImages(3, 2)
    train_batch = collate([train[(0, i)] for i in pass_order(8, 1, TRAIN_STREAM, 0)[:2]])
    val_batch = collate([val[i] for i in pass_order(3, 1, VAL_STREAM, 0)[:2]])

    hand_search_step(clf, alphas, prompts, train_batch, val_batch)

    search.args.max_steps = 1
    search.run()
    for got, want in zip(alpha_parameters(search.model) + prompt_parameters(search.model), alphas + prompts):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert all(p.requires_grad for p in alpha_parameters(search.model) + prompt_parameters(search.model))


# -- a tiny search: alpha moves, the export is the argmax --------------------------------------------------------
def test_alpha_moves_and_export_is_argmax(tmp_path):
    search = make_search(tmp_path, num_epochs=3)
    before = [a.detach().clone() for a in alpha_parameters(search.model)]
    history = search.run()
    assert len(history) == 12 and history[-1]["step"] == 12
    moved = max((a - b).abs().max().item() for a, b in zip(alpha_parameters(search.model), before))
    assert moved > 0.05  # Adam moves each logit by up to ~lr per step
    summary = alpha_summary(search.model)
    for tower, probs in summary["alpha_softmax"].items():
        cands = summary["candidates"][tower]
        expected = [cands[max(range(len(row)), key=row.__getitem__)] for row in probs]
        assert summary["chosen_lengths"][tower] == expected
        torch.testing.assert_close(torch.tensor(probs).sum(-1), torch.ones(len(probs)))
    assert summary["chosen_lengths"] == chosen_lengths(search.model)
    assert latest_checkpoint(tmp_path).name == "checkpoint_0"  # only the final one: no `checkpointing_steps`


def test_alpha_summary_is_keyed_and_sized_per_tower(tmp_path):
    # the released code saves the image alpha under the text file name and vice versa; ours are keyed by tower
    search = make_search(tmp_path)
    summary = json.loads(json.dumps(alpha_summary(search.model)))  # JSON-serialisable as written to alphas.json
    assert summary["candidates"] == {"text": [0, 1, 2], "vision": [0, 2]}
    assert [len(row) for row in summary["alpha"]["text"]] == [3, 3]
    assert [len(row) for row in summary["alpha"]["vision"]] == [2, 2]
    text_layers = [layer for layer in supernet_layers(search.model) if layer.tower == "text"]
    assert summary["alpha"]["text"][1] == text_layers[1].dpl_alpha["default"].tolist()


# -- resume --------------------------------------------------------------------------------------------------------
def test_resume_is_bit_identical(tmp_path):
    torch.manual_seed(5)
    full = make_search(tmp_path / "full", warmup_epochs=1)  # 4 steps per epoch, 2 val batches per pass
    full.run()

    torch.manual_seed(5)
    first = make_search(tmp_path / "split", warmup_epochs=1, max_steps=5, checkpointing_steps="3")
    first.run()  # stops mid-epoch 1, mid validation pass
    assert latest_checkpoint(tmp_path / "split").name == "checkpoint_1"  # steps 3 and 5
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts with
    second = make_search(tmp_path / "split", warmup_epochs=1)
    second.resume(tmp_path / "split" / "checkpoints" / "checkpoint_0")
    assert second.global_step == 3
    second.run()

    assert second.global_step == full.global_step == 8
    for got, want in zip(
        alpha_parameters(second.model) + prompt_parameters(second.model),
        alpha_parameters(full.model) + prompt_parameters(full.model),
    ):
        assert torch.equal(got, want)
    assert second.history == full.history
    assert second.prompt_optimizer.state_dict()["state"][0]["momentum_buffer"].equal(
        full.prompt_optimizer.state_dict()["state"][0]["momentum_buffer"]
    )


def _steps_of_checkpoints(out) -> list[tuple[int, int, int]]:
    states = [json.loads((p / "vlprompt_state.json").read_text()) for p in sorted((out / "checkpoints").iterdir())]
    return [(s["global_step"], s["epoch"], s["batch_in_epoch"]) for s in states]


def test_epoch_checkpoints_resume_bit_identically(tmp_path):
    # 8 images, batch 2: 4 steps per epoch; "epoch" checkpoints after steps 4 and 8, plus one at a --max_steps stop
    full = make_search(tmp_path / "full", num_epochs=3, checkpointing_steps="epoch")
    full.run()
    assert _steps_of_checkpoints(tmp_path / "full") == [(4, 1, 0), (8, 2, 0), (12, 3, 0)]
    first = make_search(tmp_path / "split", num_epochs=3, max_steps=6, checkpointing_steps="epoch")
    first.run()
    assert _steps_of_checkpoints(tmp_path / "split") == [(4, 1, 0), (6, 1, 2)]
    second = make_search(tmp_path / "split", num_epochs=3, checkpointing_steps="epoch")
    second.resume(tmp_path / "split" / "checkpoints" / "checkpoint_0")  # the start of epoch 1
    assert len(second.run()) == 8
    for got, want in zip(alpha_parameters(second.model) + prompt_parameters(second.model),
                         alpha_parameters(full.model) + prompt_parameters(full.model)):  # fmt: skip
        assert torch.equal(got, want)
    assert second.history == full.history


@pytest.mark.parametrize("value", ["0", "often", "-2", "2.5", "", "²"])
def test_checkpointing_steps_takes_the_training_loops_rule(value):
    from peft_vlprompt.training.args import TrainArguments

    message = f"`checkpointing_steps` must be a positive integer or 'epoch', got {value!r}"
    for cls in (DPLSearchArguments, TrainArguments):
        with pytest.raises(ValueError) as error:
            cls(checkpointing_steps=value)
        assert str(error.value) == message, cls
    with pytest.raises(TypeError, match=r"`checkpointing_steps` must be a str .*, got int 3"):
        DPLSearchArguments(checkpointing_steps=3)


def test_checkpoint_every_is_an_alias_of_checkpointing_steps():
    args = DPLSearchArguments(checkpoint_every=3)
    assert (args.checkpointing_steps, args.checkpoint_every, args.checkpoint_interval) == ("3", None, 3)
    assert DPLSearchArguments(checkpoint_every=3, checkpointing_steps="3").checkpoint_interval == 3
    assert DPLSearchArguments(checkpointing_steps="epoch").checkpoint_interval == "epoch"
    assert DPLSearchArguments().checkpoint_interval is None
    for other in ("4", "epoch"):
        with pytest.raises(ValueError, match=r"^`checkpoint_every` is an alias of `checkpointing_steps`: give one, got "
                           f"checkpointing_steps='{other}' and checkpoint_every=3$"):  # fmt: skip
            DPLSearchArguments(checkpoint_every=3, checkpointing_steps=other)
    with pytest.raises(ValueError, match=r"`checkpoint_every` must be >= 1, got 0"):
        DPLSearchArguments(checkpoint_every=0)


def test_missing_validation_data(tmp_path):
    model, clf = supernet()
    with pytest.raises(
        ValueError, match=r"^DPL's search needs validation data \(alpha is learned on it\): `val_dataset` is None"
    ):
        DPLSearch(model, clf, NoisyImages(4, 1), None, DPLSearchArguments(), tmp_path)
    with pytest.raises(ValueError, match=r"`val_dataset` is empty"):
        DPLSearch(model, clf, NoisyImages(4, 1), [], DPLSearchArguments(), tmp_path)
    with pytest.raises(ValueError, match="`resume_from_checkpoint`='latest' but .* holds no complete checkpoint"):
        DPLSearch(model, clf, NoisyImages(4, 1), NoisyImages(2, 2), DPLSearchArguments(), tmp_path).resume("latest")


# -- the training loop's checkpoints: JSON + safetensors, manifest, `latest`, rotation; the old format refused --------
def test_checkpoints_are_the_training_loops_format_with_rotation(tmp_path):
    search = make_search(tmp_path, max_steps=5, checkpointing_steps="1", checkpoints_total_limit=2)
    search.run()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_3", "checkpoint_4"]  # steps 4 and 5
    files = {p.name for p in (root / "checkpoint_4").iterdir()}
    assert {"vlprompt_state.json", "adapter_model.safetensors", "checkpoint_manifest.json"} <= files
    assert {"alpha_optimizer.json", "optimizer.json", "rng_state_0.safetensors"} <= files
    assert all(name.endswith((".json", ".safetensors")) for name in files)  # nothing pickled
    state = json.loads((root / "checkpoint_4" / "vlprompt_state.json").read_text())
    assert (state["method"], state["global_step"], state["epoch"], state["batch_in_epoch"]) == ("dpl_search", 5, 1, 1)
    # `latest` is the newest *complete* checkpoint: a damaged one is skipped
    (root / "checkpoint_4" / "optimizer.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "checkpoint_3"
    again = make_search(tmp_path)
    assert again.resume("latest").name == "checkpoint_3" and again.global_step == 4


class _Trap:
    def __reduce__(self):  # would create `executed` if the file were ever unpickled
        return (open, (str(TRAP_FILE), "w"))


TRAP_FILE = None


def test_the_older_pickled_format_is_refused_and_never_unpickled(tmp_path):
    global TRAP_FILE
    TRAP_FILE = tmp_path / "executed"
    old = tmp_path / "checkpoint-3"
    old.mkdir()
    torch.save({"trap": _Trap()}, old / "search_state.pt")
    search = make_search(tmp_path)
    for value in (old, "latest"):
        with pytest.raises(ValueError, match=r"checkpoint-3 is a DPL search checkpoint of the older format.*not "
                                             r"loaded.*another --output_dir"):  # fmt: skip
            search.resume(value)
    assert not TRAP_FILE.exists()


def test_another_methods_checkpoint_is_refused(tmp_path):
    make_search(tmp_path, max_steps=1).run()
    state_file = tmp_path / "checkpoints" / "checkpoint_0" / "vlprompt_state.json"
    state_file.write_text(state_file.read_text().replace('"dpl_search"', '"coop"'))
    with pytest.raises(ValueError, match=r"written by method 'coop'.*this run trains 'dpl_search'"):
        make_search(tmp_path).resume(state_file.parent)


def test_resuming_with_other_search_settings_is_refused_naming_them(tmp_path):
    make_search(tmp_path, max_steps=2).run()
    with pytest.raises(ValueError, match=r"belongs to another search: `lr` was 0.05, now 0.1; `seed` was 1, now 2\."):
        make_search(tmp_path, lr=0.1, seed=2).resume("latest")
    model = get_peft_model(tiny_clip(), DPLSearchConfig(**{**CONFIG, "mixing": "naive"}))
    other = DPLSearch(model, PromptClassifier(model, tokenizer(), CLASSNAMES), NoisyImages(8, 1), NoisyImages(3, 2),
                      make_search(tmp_path / "x").args, tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match=r"`mixing` was 'efficient', now 'naive'"):
        other.resume("latest")
    longer = make_search(tmp_path, num_epochs=3, log_every=1, checkpoints_total_limit=1)  # how long: may change
    assert longer.resume("latest").name == "checkpoint_0" and longer.global_step == 2


def test_alpha_entropy_and_argmax_lengths_go_to_the_trackers(tmp_path):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class ListTracker(GeneralTracker):
        name, requires_logging_directory = "list", False

        def __init__(self):
            super().__init__()
            self.logged = []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            pass

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

    tracker = ListTracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("dpl")
    model, clf = supernet()
    args = DPLSearchArguments(num_epochs=1, batch_size=2, lr=0.05, alpha_lr=0.05, log_every=2)
    DPLSearch(model, clf, NoisyImages(8, 1), NoisyImages(3, 2), args, tmp_path, accelerator=accelerator).run()
    accelerator.end_training()
    assert [step for step, _ in tracker.logged] == [2, 4]
    values = tracker.logged[-1][1]
    layers = {"text": [], "vision": []}
    for layer in supernet_layers(model):
        layers[layer.tower].append(layer.dpl_alpha["default"].detach())
    for tower, candidates in (("text", [0, 1, 2]), ("vision", [0, 2])):
        for i, alpha in enumerate(layers[tower]):
            p = torch.exp(alpha - alpha.max()) / torch.exp(alpha - alpha.max()).sum()  # by hand, not the library's
            assert values[f"alpha_entropy/{tower}/layer_{i}"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
            assert values[f"chosen_length/{tower}/layer_{i}"] == candidates[int(alpha.argmax())]
    assert {"search/val_loss", "search/train_loss", "search/lr"} <= values.keys()


def test_extra_generators_are_restored_per_process(tmp_path):
    def search_with(generator):
        model, clf = supernet()
        args = DPLSearchArguments(num_epochs=1, batch_size=2, max_steps=1)
        return DPLSearch(model, clf, NoisyImages(4, 1), NoisyImages(2, 2), args, tmp_path, generators=[generator])

    g = torch.Generator().manual_seed(7)
    search_with(g).run()
    expected = torch.rand(3, generator=g)  # what the generator draws next after the checkpoint
    other = torch.Generator().manual_seed(99)
    search_with(other).resume("latest")
    assert torch.equal(torch.rand(3, generator=other), expected)
    with pytest.raises(ValueError, match=r"holds 1 extra generator state\(s\), this run has 0"):
        model, clf = supernet()
        args = DPLSearchArguments(num_epochs=1, batch_size=2)
        DPLSearch(model, clf, NoisyImages(4, 1), NoisyImages(2, 2), args, tmp_path).resume("latest")


@pytest.mark.slow
def test_sigkills_at_checkpoint_file_operations_resume_to_the_same_search(tmp_path):
    """SIGKILLs at random file operations of the search's checkpoint saves and rotation (writes, torn writes, renames,
    fsyncs, deletions); re-run as a user would (`latest` once a checkpoint is complete), the search ends with the
    alpha and prompts of an uninterrupted one, bit for bit."""
    import random

    from safetensors.torch import load_file, save_file

    from tests.test_crash_safety import Faults, complete, forked, killed

    def params(search) -> dict:
        tensors = alpha_parameters(search.model) + prompt_parameters(search.model)
        return {str(i): t.detach().contiguous() for i, t in enumerate(tensors)}

    settings = dict(checkpointing_steps="2", checkpoints_total_limit=1)  # 4 checkpoints of 8 steps, rotated
    reference = make_search(tmp_path / "reference", **settings)
    reference.run()
    rng, want, resumed, chains = random.Random(5), params(reference), 0, 0
    while resumed < 6:  # chains of runs, each killed until one completes
        out, kills = tmp_path / f"chain{chains}", 0
        while True:
            resume = bool(complete(out))
            faults = Faults(rng.randint(1, 40), torn=rng.random() < 0.5)

            def run(faults=faults, resume=resume, out=out):
                faults.install()
                search = make_search(out, **settings)
                if resume:
                    search.resume("latest")
                search.run()
                save_file(params(search), str(out / "final.safetensors"))

            if not killed(forked(run)):
                break
            kills, resumed = kills + 1, resumed + resume
            assert kills < 100
        got = load_file(out / "final.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), chains
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint_3"]
        assert not [p.name for p in out.rglob(".*")]  # no temp file or folder left behind
        chains += 1
