"""Pull prompts through the real `huggingface_hub` download path, from a local stub Hub (`hub_stub_server.py`).

`HF_ENDPOINT` is read when `huggingface_hub` is imported, so the loading runs in a fresh Python process pointed at
the stub, with its own `HF_HUB_CACHE`. One process checks, in turn: `PeftModel.from_pretrained(base, repo)` loads
bit-identical prompts, `AutoPeftModel.from_pretrained(repo)` finds the base model through the adapter config (also
served by the stub) and gives bit-identical logits, and the Python snippets of the uploaded model card run as
written and print the predictions of the model that was saved.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.hub import save_prompts_with_card
from tests.hub_stub_server import FAKE_COMMIT, HubStub
from tests.tiny import IMAGE_SIZE, pixels, tiny_clip, tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
CTX = "text_model.embeddings.token_embedding.coop_ctx"

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, os, re, sys
    import torch
    import peft_vlprompt
    from huggingface_hub import hf_hub_download
    from peft import AutoPeftModel, PeftModel
    from transformers import CLIPModel

    expected = torch.load(sys.argv[1])
    ctx = lambda m: m.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]

    base = CLIPModel.from_pretrained("me/tiny-clip").eval()
    model = PeftModel.from_pretrained(base, "me/tiny-coop").eval()
    assert torch.equal(ctx(model), expected["ctx"]), "PeftModel.from_pretrained: prompts differ"
    cached = os.path.join(os.environ["HF_HUB_CACHE"], "models--me--tiny-coop", "snapshots", sys.argv[2])
    assert os.path.isfile(os.path.join(cached, "adapter_model.safetensors")), os.listdir(os.environ["HF_HUB_CACHE"])

    auto = AutoPeftModel.from_pretrained("me/tiny-coop").eval()
    assert type(auto) is PeftModel, type(auto)
    assert torch.equal(ctx(auto), expected["ctx"]), "AutoPeftModel: prompts differ"
    tok = peft_vlprompt.tuners.tokens.clip_tokenizer()
    logits = peft_vlprompt.PromptClassifier(auto, tok, ["cat", "dog"])(expected["pixels"])
    assert torch.equal(logits, expected["logits"]), (logits, expected["logits"])

    card = open(hf_hub_download("me/tiny-coop", "README.md")).read()
    snippets = re.findall(r"```python\\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2, snippets
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec("\\n".join(snippets), {"__name__": "__card__"})
    print("SNIPPET-OUTPUT " + json.dumps(out.getvalue().splitlines()))
    print("OK")
    """
)


def test_pull_from_a_stub_hub_gives_identical_prompts_and_the_card_snippet_runs(tmp_path):
    base_dir, adapter_dir, work = tmp_path / "base", tmp_path / "adapter", tmp_path / "work"
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    tiny_clip().save_pretrained(base_dir)
    image_processor.save_pretrained(base_dir)  # the card's snippet takes the tokenizer from peft_vlprompt

    model = get_peft_model(CLIPModel.from_pretrained(base_dir).eval(), CoOpConfig(n_ctx=4))
    torch.manual_seed(7)
    model.base_model.model.get_submodule(CTX)["default"].data.normal_()
    save_prompts_with_card(model, adapter_dir, repo_id="me/tiny-coop", base_model="me/tiny-clip", dataset="toy")

    # the image the card's snippet opens, and what the saved model predicts for it
    work.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(work / "image.jpg")
    clf = PromptClassifier(model, tokenizer(), ["cat", "dog"], image_processor=image_processor).eval()
    image = Image.open(work / "image.jpg").convert("RGB")
    expected_pred = clf.predict([image])
    probs = clf(image_processor(images=[image], return_tensors="pt")["pixel_values"]).softmax(-1)[0].tolist()
    expected = {
        "ctx": model.base_model.model.get_submodule(CTX)["default"].detach().clone(),
        "pixels": pixels(),
        "logits": clf(pixels()).detach(),
    }
    torch.save(expected, tmp_path / "expected.pt")

    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    with HubStub({"me/tiny-clip": base_dir, "me/tiny-coop": adapter_dir}) as hub:
        env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_CACHE=str(tmp_path / "cache"),
            HF_HOME=str(tmp_path / "hf_home"),
            HF_HUB_OFFLINE="0",
            TRANSFORMERS_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
            NO_PROXY="127.0.0.1,localhost",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        )
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "expected.pt"), FAKE_COMMIT],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=300,
        )
        requests = list(hub.requests)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        result.stdout[-2000:] + result.stderr[-4000:]
    )
    # the files really came over HTTP from the stub
    fetched = {
        path.split("/resolve/")[0] + "/" + path.rsplit("/", 1)[1] for method, path in requests if method == "GET"
    }
    assert {"/me/tiny-coop/adapter_model.safetensors", "/me/tiny-clip/model.safetensors"} <= fetched, requests

    line = next(x for x in result.stdout.splitlines() if x.startswith("SNIPPET-OUTPUT "))
    printed = json.loads(line.removeprefix("SNIPPET-OUTPUT "))
    assert printed[0] == repr(expected_pred)  # PromptClassifier snippet
    pipe_out = eval(printed[1])  # noqa: S307 - the pipeline snippet prints a list of dicts
    assert pipe_out[0]["label"] == expected_pred[0]
    assert sorted(d["label"] for d in pipe_out) == ["cat", "dog"]
    by_label = {d["label"]: d["score"] for d in pipe_out}
    assert np.allclose([by_label["cat"], by_label["dog"]], probs, atol=1e-5)
