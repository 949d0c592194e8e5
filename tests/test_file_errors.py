"""Files are checked and named (issue 11, items 6, 13, 15).

6: an adapter file must hold every tensor of the adapter, nothing else, with finite values; 13: every image a run
will read exists before the model is built, and `verify` decodes each once; 15: corrupt weights, configs and results
files are reported with their path and what is wrong.
"""

import json
import struct

import pytest
import torch
from peft import AutoPeftModel, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

from peft_vlprompt import CoCoOpConfig, CoOpConfig
from peft_vlprompt.data import load_task
from peft_vlprompt.hub import load_prompts
from peft_vlprompt.training import main
from tests.data_fixtures import make_dtd
from tests.test_examples import _load_example
from tests.tiny import tiny_clip

CTX = "text_model.embeddings.token_embedding.coop_ctx"
SAVED_CTX = f"base_model.model.{CTX}"


@pytest.fixture
def saved_coop(tmp_path):
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return folder


def load(folder):
    return PeftModel.from_pretrained(tiny_clip(), str(folder))


# -- item 6: what an adapter file holds -------------------------------------------------------------------------
def test_a_file_without_the_adapters_tensors_is_refused_naming_file_and_keys(saved_coop):
    weights = saved_coop / "adapter_model.safetensors"
    save_file({"base_model.model.text_model.something_else": torch.zeros(3)}, str(weights))
    with pytest.raises(ValueError) as info:
        load(saved_coop)
    message = str(info.value)
    assert f"adapter file {weights} does not hold adapter 'default' (coop)" in message
    assert f"it misses 1 tensor(s): `{CTX}`" in message
    assert "it has unexpected 1 tensor(s): `text_model.something_else`" in message
    # the tensor of another method (CoCoOp's meta-net next to CoOp's context) is unexpected too
    cocoop = get_peft_model(tiny_clip(), CoCoOpConfig(n_ctx=4))
    cocoop.save_pretrained(saved_coop.parent / "cocoop")
    (saved_coop / "adapter_model.safetensors").write_bytes(
        (saved_coop.parent / "cocoop" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match=r"it has unexpected 4 tensor\(s\): `text_model.embeddings.token_embedding"
                                         r".cocoop_meta_fc1.bias`"):  # fmt: skip
        load(saved_coop)


def test_a_bit_flipped_file_with_a_nan_is_refused_naming_file_and_tensor(saved_coop):
    weights = saved_coop / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    start = 8 + header_len + 4 * 5  # the 6th float32 of the only tensor
    raw[start : start + 4] = b"\xff\xff\xff\x7f"  # exponent and mantissa bits all set: NaN
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"adapter file {weights} holds non-finite values: `{CTX}` \(1 of 128 values "
                                         r"NaN/inf\)"):  # fmt: skip
        load(saved_coop)
    with pytest.raises(ValueError, match=r"holds non-finite values"):
        load_prompts(tiny_clip(), saved_coop)


def test_a_complete_finite_file_loads_the_saved_values(saved_coop):
    model = load(saved_coop)
    from safetensors.torch import load_file

    saved = load_file(str(saved_coop / "adapter_model.safetensors"))[SAVED_CTX]
    assert torch.equal(dict(model.named_parameters())[f"{SAVED_CTX}.default"], saved)


# -- item 15: corrupt files are named ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_corrupt_weights_file_is_named(saved_coop, damage):
    weights = saved_coop / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(range(256)) * 3)
    for loader in (lambda: load(saved_coop), lambda: load_prompts(tiny_clip(), saved_coop)):
        with pytest.raises(ValueError, match=rf"adapter file {weights} is not a valid safetensors file \(Safetensor"):
            loader()


def test_an_invalid_adapter_config_is_named(saved_coop):
    config = saved_coop / "adapter_config.json"
    config.write_text(config.read_text()[:-10])
    with pytest.raises(ValueError, match=rf"adapter config {config} is not valid JSON: "):
        load_prompts(tiny_clip(), saved_coop)
    with pytest.raises(ValueError, match=rf"adapter config {config} is not valid JSON: "):
        CoOpConfig.from_pretrained(str(saved_coop))
    # peft's own readers (PeftModel / AutoPeftModel / PeftConfig) name it too (`_peft_compat`)
    for load in (lambda: PeftModel.from_pretrained(tiny_clip(), str(saved_coop)),
                 lambda: AutoPeftModel.from_pretrained(str(saved_coop)),
                 lambda: PeftConfig.from_pretrained(str(saved_coop))):  # fmt: skip
        with pytest.raises(ValueError, match=rf"adapter config {config} is not valid JSON: "):
            load()
    config.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"adapter config {config} must hold a JSON object, got list"):
        load_prompts(tiny_clip(), saved_coop)


def test_a_corrupt_results_file_is_named_by_aggregate_results(tmp_path, capsys):
    aggregate = _load_example("examples/aggregate_results.py")
    good = {"method": "coop", "dataset": "dtd", "protocol": "few_shot", "seed": 1, "shots": 16, "accuracy": 60.0}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "all_results.json").write_text(json.dumps(good))
    bad = tmp_path / "b" / "all_results.json"
    bad.parent.mkdir()
    bad.write_text('{"method": "coop", "dataset": ')
    with pytest.raises(SystemExit):
        aggregate.main([str(tmp_path)])
    assert f"results file {bad} is not valid JSON" in capsys.readouterr().err
    bad.write_text(json.dumps(good | {"accuracy": float("nan")}))
    with pytest.raises(SystemExit):
        aggregate.main([str(tmp_path)])
    assert f"results file {bad}: `accuracy` must be a finite number, got nan" in capsys.readouterr().err
    bad.write_text(json.dumps({k: v for k, v in good.items() if k != "seed"}))
    with pytest.raises(SystemExit):
        aggregate.main([str(tmp_path)])
    assert f"results file {bad} misses ['seed']" in capsys.readouterr().err


# -- item 13: the files a split references ----------------------------------------------------------------------
def test_missing_images_fail_before_the_model_is_built(tmp_path, monkeypatch):
    split = make_dtd(tmp_path)
    root = tmp_path / "dtd" / "images"
    gone = [root / split["test"][1][0], root / split["train"][0][0]]
    for path in gone:
        path.unlink()
    built = []
    monkeypatch.setattr("peft_vlprompt.training.loop.load_clip", lambda *a, **k: built.append(a) or 1 / 0)
    args = ["--method", "coop", "--dataset", "dtd", "--data_dir", str(tmp_path), "--protocol", "few_shot",
            "--shots", "-1", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(FileNotFoundError) as info:
        main(args)
    message = str(info.value)
    assert "Dataset 'dtd': 2 of the 21 image files its splits reference are missing" in message
    assert f"{gone[1]} ('train')" in message and f"{gone[0]} ('test')" in message
    assert built == []


def test_verify_decodes_every_image_once_and_names_the_corrupt_one(tmp_path):
    split = make_dtd(tmp_path)
    assert load_task("dtd", tmp_path, shots=None, seed=1, verify=True).test.num_rows == 6
    broken = tmp_path / "dtd" / "images" / split["val"][0][0]
    broken.write_bytes(broken.read_bytes()[:20])  # a truncated JPEG
    load_task("dtd", tmp_path, shots=None, seed=1)  # without `verify` only existence is checked (cheap)
    with pytest.raises(ValueError, match=rf"Dataset 'dtd': 1 of 21 images cannot be decoded: {broken} \("):
        load_task("dtd", tmp_path, shots=None, seed=1, verify=True)


def test_the_verify_images_flag_decodes_before_the_model_is_built(tmp_path, monkeypatch):
    split = make_dtd(tmp_path)
    broken = tmp_path / "dtd" / "images" / split["test"][0][0]
    broken.write_bytes(b"not an image")
    built = []
    monkeypatch.setattr("peft_vlprompt.training.loop.load_clip", lambda *a, **k: built.append(a) or 1 / 0)
    args = ["--method", "coop", "--dataset", "dtd", "--data_dir", str(tmp_path), "--protocol", "few_shot",
            "--shots", "-1", "--output_dir", str(tmp_path / "run"), "--verify_images"]  # fmt: skip
    with pytest.raises(ValueError, match=rf"Dataset 'dtd': 1 of 21 images cannot be decoded: {broken} \("):
        main(args)
    assert built == []


def test_the_hub_cli_names_a_corrupt_results_file(saved_coop, tmp_path):
    from peft_vlprompt.hub import __main__ as cli

    results = tmp_path / "all_results.json"
    results.write_text('{"accuracy": 5')
    with pytest.raises(ValueError, match=rf"{results} cannot be read as JSON: "):
        cli.main([str(saved_coop), "--results", str(results), "--output", str(tmp_path / "card.md")])


def test_a_corrupt_class_name_file_of_a_dataset_is_named(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "oxford_flowers"
    (base / "jpg").mkdir(parents=True)
    scipy_io.savemat(base / "imagelabels.mat", {"labels": [[1, 2]]})
    (base / "cat_to_name.json").write_text('{"1": "pink primrose", ')
    with pytest.raises(ValueError, match=rf"{base / 'cat_to_name.json'} is not valid JSON: "):
        load_task("oxford_flowers", tmp_path, shots=None, seed=1)
