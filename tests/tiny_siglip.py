"""Tiny random SigLIP models, a word-level tokenizer built offline, and a hand re-statement of SigLIP's text tower.

The tokenizer has no start token and only appends "</s>", as SigLIP's sentencepiece tokenizer (which cannot be
downloaded at test time); lower-cased, so the placeholder "X" is the word "x" (also the first word of "x-ray").

`text_features` restates `SiglipTextTransformer` from the math with plain tensor ops (it reads the weights of an
untouched model and never calls transformers' modules or peft_vlprompt's wrappers): token embeddings + positions,
pre-LN blocks with BIDIRECTIONAL attention and no mask (the text is padded to the full length), tanh-GELU MLPs, the
final norm, the LAST position through `head`. `vision_features` restates the vision tower the same way, with vision
prompts appended at the chosen layers and cut back to the patches before the post-norm and the pooling head.
"""

import math

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

WORDS = ["<unk>", "</s>", "x", "-", "ray", "cat", "golden", "retriever", ".", "a", "photo", "of"]
VOCAB = {word: i for i, word in enumerate(WORDS)}
EOS = VOCAB["</s>"]
MAX_LEN = 16


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # "x-ray." -> x, -, ray, .
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    # ids only, as `SiglipTokenizer` (model_input_names=["input_ids"]): SigLIP text runs without an attention mask
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="</s>", model_input_names=["input_ids"]
    )


def tiny_siglip(
    seed: int = 0, vocab_size: int = len(WORDS), eos: int = EOS, max_len: int = MAX_LEN, text_width: int = 32
) -> SiglipModel:
    """Two layers per tower, 4x4 patches of a 32-pixel image; logit scale/bias set (init zeroes them) so the
    sigmoid logit rule is visible."""
    torch.manual_seed(seed)
    config = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=text_width, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=max_len, projection_size=40,
                         eos_token_id=eos, pad_token_id=eos, bos_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=40, intermediate_size=80,
                           num_hidden_layers=2, num_attention_heads=4),
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
        model.logit_bias.fill_(-2.0)
    return model


def prompt_embeds(words: list[str], base: SiglipModel, length: int = MAX_LEN) -> torch.Tensor:
    """(length, d) token embeddings of `words` (written out by hand), then "</s>" up to `length` (end + padding)."""
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    return emb[[VOCAB[w] for w in words] + [EOS] * (length - len(words))]


def _linear(x, module):
    return x @ module.weight.T + module.bias


def _layer_norm(x, module):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _attention(h, kv, attn, heads):
    """softmax(q kᵀ / sqrt(d)) v over ALL keys (bidirectional, no mask), then out_proj; h (B, L, w), kv (B, K, w)."""
    batch, length, width = h.shape
    hd = width // heads
    q = _linear(h, attn.q_proj).view(batch, length, heads, hd).transpose(1, 2)
    k = _linear(kv, attn.k_proj).view(batch, kv.shape[1], heads, hd).transpose(1, 2)
    v = _linear(kv, attn.v_proj).view(batch, kv.shape[1], heads, hd).transpose(1, 2)
    out = ((q @ k.transpose(-1, -2)) / hd**0.5).softmax(-1) @ v
    return _linear(out.transpose(1, 2).reshape(batch, length, width), attn.out_proj)


@torch.no_grad()
def text_features(base: SiglipModel, embeds: torch.Tensor, replace=None, prefix=None, start: int = 0):
    """Projected (unnormalised) text features (B, D) of input token embeddings (B, L, d).

    `replace[i]` (i >= 1): rows start..start+n-1 of the hidden states entering layer i become the prompts (n, d).
    `prefix[i]`: layer i's keys/values are computed from LN1 of [x ; P] (every token sees the prompts).
    """
    replace, prefix = replace or {}, prefix or {}
    text = base.text_model
    heads = base.config.text_config.num_attention_heads
    x = embeds + text.embeddings.position_embedding.weight[: embeds.shape[1]]
    for i, layer in enumerate(text.encoder.layers):
        if i in replace:
            p = replace[i].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :start], p, x[:, start + p.shape[1] :]], dim=1)
        h = _layer_norm(x, layer.layer_norm1)
        kv = (
            h
            if i not in prefix
            else torch.cat([h, _layer_norm(prefix[i], layer.layer_norm1).expand(h.shape[0], -1, -1)], 1)
        )
        x = x + _attention(h, kv, layer.self_attn, heads)
        x = x + _linear(_gelu_tanh(_linear(_layer_norm(x, layer.layer_norm2), layer.mlp.fc1)), layer.mlp.fc2)
    return _linear(_layer_norm(x, text.final_layer_norm)[:, -1], text.head)


@torch.no_grad()
def vision_features(base: SiglipModel, pixel_values: torch.Tensor, prefix=None, append=None, hidden_states=False):
    """Pooled image features (B, D) restated: patches (conv as a matmul, with bias) + positions (no CLS), pre-LN
    blocks (`prefix[i]`: extra keys/values LN1(P) of layer i), post-LN, then the attention-pooling head: a learned
    probe attends over the tokens (`nn.MultiheadAttention` weights), plus a residual LN + MLP.

    `append[0]`: prompts (n, d) appended after the patch embeddings (no position); `append[i]` (i >= 1): whatever
    follows the patches in the sequence entering layer i is replaced by these prompts. Before the post-LN the
    sequence is cut back to the patches, so the head pools exactly the patch tokens. `hidden_states=True` also
    returns each layer's output (B, tokens, d), prompts included, as a list."""
    prefix, append = prefix or {}, append or {}
    vision, cfg = base.vision_model, base.config.vision_config
    emb, p, heads = vision.embeddings, cfg.patch_size, cfg.num_attention_heads
    batch, grid = pixel_values.shape[0], cfg.image_size // cfg.patch_size
    patches = pixel_values.reshape(batch, 3, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(batch, grid**2, -1)
    x = patches @ emb.patch_embedding.weight.reshape(cfg.hidden_size, -1).T + emb.patch_embedding.bias
    x = x + emb.position_embedding.weight
    outputs = []
    for i, layer in enumerate(vision.encoder.layers):
        if i in append:  # the patches stay, the tokens after them are this layer's prompts
            x = torch.cat([x[:, : grid**2], append[i].expand(batch, -1, -1)], dim=1)
        h = _layer_norm(x, layer.layer_norm1)
        kv = (
            h
            if i not in prefix
            else torch.cat([h, _layer_norm(prefix[i], layer.layer_norm1).expand(batch, -1, -1)], 1)
        )
        x = x + _attention(h, kv, layer.self_attn, heads)
        x = x + _linear(_gelu_tanh(_linear(_layer_norm(x, layer.layer_norm2), layer.mlp.fc1)), layer.mlp.fc2)
        outputs.append(x)
    x = _layer_norm(x[:, : grid**2], vision.post_layernorm)  # appended prompts never reach the head
    head = vision.head
    wq, wk, wv = head.attention.in_proj_weight.chunk(3)
    bq, bk, bv = head.attention.in_proj_bias.chunk(3)
    width, hd = x.shape[-1], x.shape[-1] // heads
    q = (head.probe @ wq.T + bq).view(1, heads, hd).transpose(0, 1)  # (H, 1, hd)
    k = (x @ wk.T + bk).view(batch, -1, heads, hd).transpose(1, 2)  # (B, H, N, hd)
    v = (x @ wv.T + bv).view(batch, -1, heads, hd).transpose(1, 2)
    pooled = ((q @ k.transpose(-1, -2)) / hd**0.5).softmax(-1) @ v  # (B, H, 1, hd)
    pooled = _linear(pooled.transpose(1, 2).reshape(batch, width), head.attention.out_proj)
    pooled = pooled + _linear(_gelu_tanh(_linear(_layer_norm(pooled, head.layernorm), head.mlp.fc1)), head.mlp.fc2)
    return (pooled, outputs) if hidden_states else pooled


@torch.no_grad()
def image_features(base: SiglipModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The untouched vision tower's pooled features (what the text-side methods leave unchanged)."""
    return base.vision_model(pixel_values=pixel_values).pooler_output


def sigmoid_logits(base: SiglipModel, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """SigLIP's logits_per_image: exp(scale) * cos + bias."""
    cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return base.logit_scale.exp() * cos + base.logit_bias


def logits_through_the_towers(base: SiglipModel, embeds: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Sigmoid logits of prompt embeddings (positions not yet added) run through the model's own text layers
    (bidirectional, no mask, the last position through the head) and images through its vision tower."""
    text = base.text_model
    x = embeds + text.embeddings.position_embedding.weight[: embeds.shape[1]]
    for layer in text.encoder.layers:
        x = layer(x, attention_mask=None)
        x = x[0] if isinstance(x, tuple) else x
    t = text.head(text.final_layer_norm(x)[:, -1])
    v = base.vision_model(pixel_values=pixel_values).pooler_output
    return base.logit_scale.exp() * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).t() + base.logit_bias


def assert_auto_peft_model_in_fresh_process(adapter_dir, expected_file, model_class: str, classnames) -> None:
    """`AutoPeftModel.from_pretrained(adapter_dir)` in a new interpreter (1 thread, offline) is a `PeftModel` over a
    transformers `model_class` and gives exactly the logits saved in `expected_file` (`{"pixels", "logits"}`)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(1)
        import peft_vlprompt
        import transformers
        from peft import AutoPeftModel, PeftModel
        from tests.tiny_siglip import word_tokenizer
        model = AutoPeftModel.from_pretrained({str(adapter_dir)!r}).eval()
        assert type(model) is PeftModel, type(model)
        assert isinstance(model.base_model.model, transformers.{model_class}), type(model.base_model.model)
        data = torch.load({str(expected_file)!r})
        with torch.no_grad():
            logits = peft_vlprompt.PromptClassifier(model, word_tokenizer(), {list(classnames)!r}).eval()(data["pixels"])
        assert torch.equal(logits, data["logits"]), (logits, data["logits"])
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
