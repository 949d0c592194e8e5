"""What differs between pretraining a toy CLIP and a toy SigLIP: model config, tokenizer, image normalisation, loss.

`pretrain.py` runs one loop for both; a family here supplies the parts that differ (the toy model builders are the
one place outside `backbones/` allowed to know model classes).

* CLIP: the real CLIP BPE (shipped in `peft_vlprompt/assets`), text padded to the longest caption with an attention
  mask, CLIP's image mean/std, symmetric soft-target InfoNCE, logit scale initialised at 1/0.07 and clamped at 100.
* SigLIP: a word-level tokenizer over the toy world's vocabulary (SigLIP's sentencepiece model cannot be downloaded
  here; like it, it adds no start token and appends `</s>`, which also pads), text padded to the full length without
  a mask (as SigLIP is trained), mean/std 0.5, and the sigmoid loss of SigLIP (arXiv:2303.15343) with its
  initialisation (logit scale log 10, bias -10): every pair is a binary problem, positive iff the caption is the
  image's own or describes it.
"""

import json
import math
import os
import re
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .world import IMAGE_SIZE

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BOS, EOS = 49406, 49407  # CLIP BPE
SIGLIP_SPECIAL_TOKENS = ("<unk>", "</s>")  # ids 0 and 1 of the toy SigLIP's vocabulary; "</s>" ends and pads
SIGLIP_EOS = SIGLIP_SPECIAL_TOKENS.index("</s>")
SIGLIP_TEXT_LENGTH = 24  # toy SigLIP's max_position_embeddings: 16 context tokens + class name + "." + "</s>" fit


def contrastive_loss(logits_per_image: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: `positives[i, j]` (bool, images x captions, every row and column with a
    positive) marks the captions image i should match; each direction spreads its target over its positives."""
    pos = positives.to(logits_per_image.dtype)
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits_per_image, dim=1)).sum(1).mean()
    t2i = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits_per_image, dim=0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def sigmoid_loss(logits_per_image: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss: -sum_ij log sigmoid(z_ij * logit_ij) / batch, z_ij = +1 where `positives[i, j]`, else -1."""
    z = 2.0 * positives.to(logits_per_image.dtype) - 1.0
    return -F.logsigmoid(z * logits_per_image).sum() / len(positives)


def toy_vocabulary() -> list[str]:
    """Every word the toy world, its captions and the package's prompt templates use (sorted, lower-case)."""
    from ..data import templates
    from . import captions, world

    strings: list[str] = []

    def collect(value):
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                collect(k)
                collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    for module in (templates, captions, world):
        for name, value in vars(module).items():
            if name.isupper():
                collect(value)
    for task in world.TASKS.values():
        collect([task.template, *task.classnames])
    words = {w for s in strings for w in re.findall(r"\w+|[^\w\s]", s.lower().replace("{}", " "))}
    words.add("x")  # the context placeholder "X", lower-cased
    return sorted(words)


def _tower(width: int, layers: int, head_dim: int) -> dict:
    """The size fields of one transformer tower: pre-LN blocks with a 4x MLP and `width / head_dim` heads."""
    return dict(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=width // head_dim
    )


def _vision_tower(cfg) -> dict:
    return dict(
        image_size=IMAGE_SIZE, patch_size=cfg.patch_size, **_tower(cfg.vision_width, cfg.vision_layers, cfg.head_dim)
    )


@dataclass(frozen=True)
class ToyFamily:
    """One family's pretraining parts (see the module docstring)."""

    name: str
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def config(self, cfg):
        raise NotImplementedError

    def model(self, cfg):
        raise NotImplementedError

    def tokenizer(self):
        raise NotImplementedError

    def text_inputs(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, logits_per_image: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, model) -> None:
        """Constraints applied after every optimiser step."""

    def save_processor(self, directory: str) -> None:
        raise NotImplementedError


class ToyClip(ToyFamily):
    def config(self, cfg):
        from transformers import CLIPConfig

        return CLIPConfig(
            text_config=dict(
                vocab_size=49408,
                **_tower(cfg.text_width, cfg.text_layers, cfg.head_dim),
                max_position_embeddings=77,
                eos_token_id=EOS,
                bos_token_id=BOS,
                pad_token_id=EOS,
            ),
            vision_config=_vision_tower(cfg),
            projection_dim=cfg.projection_dim,
            logit_scale_init_value=math.log(1 / 0.07),  # CLIP's initial temperature 0.07
        )

    def model(self, cfg):
        from transformers import CLIPModel

        return CLIPModel(self.config(cfg))

    def tokenizer(self):
        from transformers import CLIPTokenizer

        from ..assets import clip_tokenizer_path

        return CLIPTokenizer.from_pretrained(clip_tokenizer_path())

    def text_inputs(self, ids):
        n = max(len(i) for i in ids)  # pad to the longest caption, masked (causal text: exact)
        input_ids = torch.full((len(ids), n), EOS, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def loss(self, logits_per_image, positives):
        return contrastive_loss(logits_per_image, positives)

    def after_step(self, model):
        with torch.no_grad():  # as CLIP: the temperature may not go below 1/100
            model.logit_scale.clamp_(0, math.log(100))

    def save_processor(self, directory):
        from transformers import CLIPImageProcessor, CLIPTokenizer

        from ..assets import clip_tokenizer_path

        size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=size, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
        ).save_pretrained(directory)
        CLIPTokenizer.from_pretrained(clip_tokenizer_path(), model_max_length=77).save_pretrained(directory)
        # ship the BPE files (1.5 MB), not the 3.6 MB tokenizer.json built from them
        os.remove(os.path.join(directory, "tokenizer.json"))
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(clip_tokenizer_path(), name), os.path.join(directory, name))
        _drop_local_keys(os.path.join(directory, "tokenizer_config.json"))


class ToySiglip(ToyFamily):
    def config(self, cfg):
        from transformers import SiglipConfig

        return SiglipConfig(
            text_config=dict(
                vocab_size=len(SIGLIP_SPECIAL_TOKENS) + len(toy_vocabulary()),
                **_tower(cfg.text_width, cfg.text_layers, cfg.head_dim),
                max_position_embeddings=SIGLIP_TEXT_LENGTH,
                projection_size=cfg.vision_width,  # SigLIP compares text head outputs with vision head outputs
                eos_token_id=SIGLIP_EOS,
                pad_token_id=SIGLIP_EOS,
                bos_token_id=SIGLIP_EOS,
            ),
            vision_config=_vision_tower(cfg),
        )

    def model(self, cfg):
        from transformers import SiglipModel

        model = SiglipModel(self.config(cfg))
        with torch.no_grad():  # SigLIP's initialisation of the temperature and bias
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
        return model

    def tokenizer(self):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        vocab = {w: i for i, w in enumerate([*SIGLIP_SPECIAL_TOKENS, *toy_vocabulary()])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        # ids only and padded to the full length, as SigLIP's tokenizer is used (no attention mask)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<unk>",
            eos_token="</s>",
            pad_token="</s>",
            model_input_names=["input_ids"],
            model_max_length=SIGLIP_TEXT_LENGTH,
        )

    def text_inputs(self, ids):
        if max(len(i) for i in ids) > SIGLIP_TEXT_LENGTH:
            raise ValueError(f"a caption is longer than the toy SigLIP's {SIGLIP_TEXT_LENGTH} tokens")
        input_ids = torch.full((len(ids), SIGLIP_TEXT_LENGTH), SIGLIP_EOS, dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
        return {"input_ids": input_ids}

    def loss(self, logits_per_image, positives):
        return sigmoid_loss(logits_per_image, positives)

    def save_processor(self, directory):
        from transformers import SiglipImageProcessor, SiglipProcessor

        image_processor = SiglipImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        SiglipProcessor(image_processor=image_processor, tokenizer=self.tokenizer()).save_pretrained(directory)
        _drop_local_keys(os.path.join(directory, "tokenizer_config.json"))


def _drop_local_keys(path: str) -> None:
    """Remove machine-specific keys the tokenizer writer records (so the shipped files do not depend on the host)."""
    with open(path) as f:
        config = {k: v for k, v in json.load(f).items() if k not in ("is_local", "local_files_only")}
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


FAMILIES = {
    "clip": ToyClip("clip", CLIP_MEAN, CLIP_STD),
    "siglip": ToySiglip("siglip", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
