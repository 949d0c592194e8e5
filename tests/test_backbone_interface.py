"""The backbone interface: only `backbones/` knows a model family, and the registry picks (or refuses) a family."""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from peft_vlprompt.backbones import FAMILIES, Backbone, ClipBackbone, backbone_for, family_of, load_backbone, register
from tests.tiny import tiny_clip

PACKAGE = Path(__file__).resolve().parents[1] / "peft_vlprompt"
# the only places allowed to know a family: the backbones themselves and the toy model builders
ALLOWED = {PACKAGE / "backbones", PACKAGE / "toy" / "pretrain.py", PACKAGE / "toy" / "families.py"}
# class-name prefixes of transformers' vision-language families (CLIP and the ones issue 13 adds or may add)
FAMILY_CLASS = re.compile(r"^(CLIP|Clip|Siglip|SigLIP|MetaClip|ChineseCLIP|AltCLIP|XCLIP|Blip|Align|OwlV)")
MODULE_PATH = re.compile(r"\b(text_model|vision_model)\b|^(text_projection|visual_projection)$|\.token_embedding\b")
TOWER_ATTRIBUTES = {"text_model", "vision_model"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _name(node: ast.AST) -> str:
    """The last component of a Name / Attribute (`transformers.CLIPModel` -> `CLIPModel`)."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def family_violations(source: str) -> list[str]:
    """What in `source` names a model family: imports of its classes, isinstance checks and from_pretrained calls on
    them, module paths spelled in strings, and tower attributes (`.text_model`). Docstrings and comments are free."""
    tree = ast.parse(source)
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transformers"):
            if node.module.startswith("transformers.models."):
                found.append(f"line {node.lineno}: imports from {node.module}")
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if FAMILY_CLASS.match(a.name)]
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: imports {a.name}"
                for a in node.names
                if a.name.startswith("transformers.models.")
            ]
        elif isinstance(node, ast.Call) and _name(node.func) == "isinstance" and len(node.args) == 2:
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            found += [
                f"line {node.lineno}: isinstance against {_name(c)}" for c in classes if FAMILY_CLASS.match(_name(c))
            ]
        elif isinstance(node, ast.Call) and _name(node.func) == "from_pretrained":
            owner = _name(node.func.value) if isinstance(node.func, ast.Attribute) else ""
            if FAMILY_CLASS.match(owner):
                found.append(f"line {node.lineno}: {owner}.from_pretrained")
        elif isinstance(node, ast.Attribute) and node.attr in TOWER_ATTRIBUTES:
            found.append(f"line {node.lineno}: attribute .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if MODULE_PATH.search(node.value):
                found.append(f"line {node.lineno}: module path in {node.value!r}")
    return found


def test_the_scanner_finds_each_kind_of_family_knowledge():
    # hand-written offenders, one per rule, so the package scan below can fail
    offenders = {
        "from transformers import CLIPModel": "imports CLIPModel",
        "from transformers.models.clip.modeling_clip import clip_loss": "imports from transformers.models.clip.modeling_clip",
        "import transformers.models.siglip": "imports transformers.models.siglip",
        "isinstance(m, (nn.Linear, transformers.SiglipModel))": "isinstance against SiglipModel",
        "m = CLIPTokenizer.from_pretrained(p)": "CLIPTokenizer.from_pretrained",
        "m.get_submodule('text_model.encoder.layers.0')": "module path in 'text_model.encoder.layers.0'",
        "k = f'vision_model.encoder.layers.{i}'": "module path in 'vision_model.encoder.layers.'",
        "p = 'visual_projection'": "module path in 'visual_projection'",
        "h = clip.text_model(input_ids=ids)": "attribute .text_model",
    }
    for source, expected in offenders.items():
        assert [v.split(": ", 1)[1] for v in family_violations(source)] == [expected], source
    clean = '"""Works with a `CLIPModel`; wraps `text_model.embeddings`."""\n# CLIPModel.from_pretrained(x)\nb.text_projection\n'
    assert family_violations(clean) == []


def test_no_module_outside_backbones_knows_a_model_family():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path == a or a in path.parents for a in ALLOWED):
            continue
        violations = family_violations(path.read_text())
        if violations:
            found[str(path.relative_to(PACKAGE))] = violations
    assert found == {}, "ask `peft_vlprompt.backbones` instead: " + repr(found)


def test_the_clip_backbone_reads_the_model_as_its_config_says():
    model = tiny_clip(text_layers=2, vision_layers=3)
    text, vision = model.config.text_config, model.config.vision_config
    b = backbone_for(model)
    assert type(b) is ClipBackbone and b.family == "clip"
    assert (b.text_width, b.vision_width, b.text_layers, b.vision_layers) == (
        text.hidden_size, vision.hidden_size, 2, 3)  # fmt: skip
    assert b.num_image_tokens == (vision.image_size // vision.patch_size) ** 2 + 1
    assert model.get_submodule(b.token_embedding) is model.text_model.embeddings.token_embedding
    assert model.get_submodule(b.vision_embeddings) is model.vision_model.embeddings
    assert model.get_submodule(b.text_attention(1)) is model.text_model.encoder.layers[1].self_attn
    assert model.get_submodule(b.vision_layer(2)) is model.vision_model.encoder.layers[2]
    assert (
        model.get_submodule(b.attention_norm(b.vision_attention(0)))
        is model.vision_model.encoder.layers[0].layer_norm1
    )
    assert [b.tower_of(p) for p in ("text_projection", b.text_layer(0), "visual_projection", b.vision_layer(1))] == [
        "text", "text", "vision", "vision"]  # fmt: skip
    with pytest.raises(ValueError, match="'logit_scale' is in neither tower of a clip model"):
        b.tower_of("logit_scale")
    vision_ids = {id(m) for m in list(model.vision_model.modules()) + list(model.visual_projection.modules())}
    assert {id(m) for m in b.tower_modules(model, "vision")} == vision_ids
    assert b.tower(model, "text") is model.text_model
    # CLIP: causal text, pad to the longest, CLS pooling, softmax logits without bias
    assert (b.text_is_causal, b.text_padding, b.vision_pooling, b.logit_rule) == (True, "longest", "cls", "softmax")
    assert b.logit_bias(model) is None and torch.equal(b.logit_scale(model), model.logit_scale.exp())


def test_the_pooled_position_is_where_clip_pools():
    model = tiny_clip()
    b = backbone_for(model)
    eos = model.config.text_config.eos_token_id
    ids = torch.tensor([[eos - 1, 5, 6, eos, 0, 0], [eos - 1, eos, 0, 0, 0, 0]])
    assert b.eot_index(ids).tolist() == [3, 1]  # the first EOS, written out by hand
    hidden = model.text_model(input_ids=ids).last_hidden_state
    assert torch.equal(model.text_model(input_ids=ids).pooler_output, hidden[torch.arange(2), b.eot_index(ids)])


def _tiny_bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8))


class _Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


def test_an_unsupported_model_gets_an_error_listing_the_supported_families(tmp_path):
    message = r"unsupported model BertModel \(model_type 'bert'\): peft_vlprompt supports clip \(model_type clip\)"
    with pytest.raises(TypeError, match=message):
        backbone_for(_tiny_bert())
    with pytest.raises(TypeError, match=message):
        backbone_for(_Wrapper(_tiny_bert()))  # a wrapper around it (as PeftModel): named by what it wraps
    _tiny_bert().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=message):  # before the missing image processor is noticed
        load_backbone(str(tmp_path))


class _Dual(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"model_type": "dual_test"})()


def test_a_new_family_is_one_registered_class(monkeypatch):
    @dataclass(frozen=True)
    class DualBackbone(Backbone):
        family = "dual_test"
        model_type = ("dual_test",)

        @classmethod
        def from_model(cls, model):
            return cls(8, 8, 1, 1, 4, 16, 100, 5, 2)

    monkeypatch.setitem(FAMILIES, "dual_test", DualBackbone)
    assert family_of(_Dual()) is DualBackbone and backbone_for(_Dual()).max_positions == 16
    listed = r"supports clip \(model_type clip\), metaclip2 \(model_type metaclip_2\), siglip \(model_type siglip\), "
    listed += r"siglip2 \(model_type siglip2\), dual_test"
    with pytest.raises(TypeError, match=listed):
        backbone_for(_tiny_bert())
    assert register(DualBackbone) is DualBackbone and FAMILIES["dual_test"] is DualBackbone


def test_the_classifier_follows_the_logit_rule_of_the_family(monkeypatch):
    from peft_vlprompt import PromptClassifier
    from tests.tiny import pixels, tokenizer

    model = tiny_clip().eval()
    names, images = ["cat", "dog"], pixels()
    with torch.no_grad():  # by hand: exp(log-scale) * cosine of the template prompts and the images
        ids = tokenizer()([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
        text = torch.nn.functional.normalize(model.get_text_features(**ids).pooler_output, dim=-1)
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
        cosine = model.logit_scale.exp() * image @ text.t()
        softmax_logits = PromptClassifier(model, tokenizer(), names, template="a photo of a {}.")(images)
        torch.testing.assert_close(softmax_logits, cosine)
        # a sigmoid family (SigLIP's rule): the learned bias is added, so `predict` thresholds see it
        monkeypatch.setattr(ClipBackbone, "logit_rule", "sigmoid")
        model.logit_bias = nn.Parameter(torch.tensor([-3.5]))
        sigmoid_logits = PromptClassifier(model, tokenizer(), names, template="a photo of a {}.")(images)
        torch.testing.assert_close(sigmoid_logits, cosine - 3.5)


def test_attention_projections_are_named_by_the_family():
    from peft_vlprompt.backbones import attention_projections

    @dataclass(frozen=True)
    class OtherBackbone(Backbone):
        attention_projections = {"q": "wq", "o": "wo"}

        @classmethod
        def text_attention(cls, index):
            return f"txt.blocks.{index}.attn"

        @classmethod
        def vision_attention(cls, index):
            return f"img.blocks.{index}.attn"

    assert attention_projections(1, 2, ("q", "o"), ("vision",), OtherBackbone) == [
        "img.blocks.0.attn.wq", "img.blocks.0.attn.wo", "img.blocks.1.attn.wq", "img.blocks.1.attn.wo"]  # fmt: skip
    assert attention_projections(1, 1, ("v",), ("text",)) == ["text_model.encoder.layers.0.self_attn.v_proj"]
    with pytest.raises(ValueError, match=r"must be among \['o', 'q'\]"):
        attention_projections(1, 1, ("k",), ("text",), OtherBackbone)


def test_text_is_padded_as_the_family_needs(monkeypatch):
    from peft_vlprompt import PromptClassifier
    from tests.tiny import tokenizer

    model = tiny_clip().eval()
    clf = PromptClassifier(model, tokenizer(), ["cat", "golden retriever"], template="a photo of a {}.")
    longest = len(tokenizer()("a photo of a golden retriever.")["input_ids"])  # SOS + words + EOT
    assert clf.tokenize(clf.prompts()).shape == (2, longest)
    monkeypatch.setattr(ClipBackbone, "text_padding", "max_length")  # a bidirectional family (SigLIP) pads fully
    ids = clf.tokenize(clf.prompts())
    assert ids.shape == (2, model.config.text_config.max_position_embeddings)


def test_the_shared_prefix_shortcut_is_taken_only_under_causal_text_attention(monkeypatch):
    from peft_vlprompt.text_prefix import shared_prefix_text_features
    from tests.tiny import tokenizer

    model = tiny_clip().eval()
    texts = [f"a photo of a photo of a photo of a {name}." for name in ("cat", "dog", "bird")]
    ids = tokenizer()(texts, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        shared = shared_prefix_text_features(model, ids)
        assert shared is not None  # CLIP: causal, the prompts share 10 tokens
        torch.testing.assert_close(shared, model.get_text_features(input_ids=ids).pooler_output)
        monkeypatch.setattr(ClipBackbone, "text_is_causal", False)  # bidirectional text (SigLIP): never shared
        assert shared_prefix_text_features(model, ids) is None
