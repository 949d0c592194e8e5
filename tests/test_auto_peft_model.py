"""`AutoPeftModel.from_pretrained` in a fresh Python process, after `import peft_vlprompt` only."""

import os
import subprocess
import sys
import textwrap

import torch
from peft import get_peft_model
from transformers import CLIPModel

from peft_vlprompt import CoOpConfig, PromptClassifier
from tests.tiny import pixels, tiny_clip, tokenizer


def test_auto_peft_model_in_a_fresh_process_gives_bit_identical_logits(tmp_path):
    tiny_clip().save_pretrained(tmp_path / "base")
    model = get_peft_model(CLIPModel.from_pretrained(tmp_path / "base").eval(), CoOpConfig(n_ctx=4))
    torch.manual_seed(3)
    next(p for p in model.parameters() if p.requires_grad).data.normal_()
    model.save_pretrained(tmp_path / "adapter")
    expected = PromptClassifier(model, tokenizer(), ["cat", "dog"]).eval()(pixels())
    torch.save({"pixels": pixels(), "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        import peft_vlprompt
        from peft import AutoPeftModel, PeftModel
        from transformers import CLIPTokenizer
        model = AutoPeftModel.from_pretrained({str(tmp_path / "adapter")!r}).eval()
        assert type(model) is PeftModel, type(model)
        tok = CLIPTokenizer.from_pretrained(peft_vlprompt.assets.clip_tokenizer_path())
        data = torch.load({str(tmp_path / "expected.pt")!r})
        logits = peft_vlprompt.PromptClassifier(model, tok, ["cat", "dog"])(data["pixels"])
        assert torch.equal(logits, data["logits"]), (logits, data["logits"])
        print("OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
