"""`PromptClassifier`: class names -> prompts -> (cached) normalised text features -> CLIP logits.

Works with a plain `CLIPModel` (zero-shot CLIP with a template) and with any peft_vlprompt adapter. Text is padded to
the longest prompt of the batch, not to 77: under the causal mask the pooled EOT feature does not see later
positions, so the result is the same and the cost scales with the real prompt length. The prefix that every class
prompt shares (SOS + unified context + template words) is encoded once, not once per class (`shared_prefix`, see
`text_prefix`). Text features are recomputed in training mode (the prompts change every step) and cached in eval
mode; the cache key includes the class names, the enabled adapters and the version counters of their tensors, so an
optimizer step, `disable_adapter()`, `set_adapter()` or new class names invalidate it.

Image-conditioned adapters (CoCoOp: `config.image_conditioned`) have one text feature per (image, class) pair:
`forward` computes the image features first, then encodes the B x C prompts in batched text-tower calls of at most
`class_chunk_size` rows, each row conditioned on its image, and returns logits[b, c] = scale * cos(image b, text of
class c for image b).
"""

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import backbone_for, unwrap_model
from .finite import check_finite
from .text_prefix import shared_prefix_text_features
from .tuners.base import DEFAULT_TEMPLATE, VLPromptConfig, enabled_configs, text_rows_for_classes
from .tuners.cocoop.layer import image_conditioning
from .tuners.tokens import class_text, leading_special_tokens

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MEMORY_BUDGET = 2 * 2**30
_NONFINITE_HINT = "NaN/inf inputs or prompts give no prediction (every class would tie)"


class PromptClassifier(nn.Module):
    """Zero-shot-style CLIP classifier over a list of class names, prompted by the model's active adapter.

    Args:
        model: a `CLIPModel`, or a `PeftModel` wrapping one with a peft_vlprompt adapter.
        tokenizer: the CLIP tokenizer (e.g. `CLIPTokenizer.from_pretrained(path)`).
        classnames: class names, in label order.
        template: hand-crafted prompt with `{}` for the class name; used when no adapter learns text context, and
            for the zero-shot teacher features (`zero_shot_text_features`).
        image_processor: optional `CLIPImageProcessor` for `predict(images)`.
        class_chunk_size: classes encoded per text-tower call (bounds memory for 1000-class datasets); for
            image-conditioned adapters, (image, class) prompt rows per call.
        text_memory_budget: bytes of text-tower activations (estimated by `text_row_bytes`) one call may use; when
            training needs more for all rows (CoCoOp: images x classes), each call's activations are recomputed in
            backward instead of kept (same results). Default 2 GiB.
        shared_prefix: encode the prompt prefix that all classes share (SOS + unified context + template words) once
            per call instead of once per class (`peft_vlprompt.text_prefix`; the same features up to float summation
            order). Falls back to the full text tower where nothing is shared exactly. False: always the full tower.

    Example:
        >>> clf = PromptClassifier(peft_model, tokenizer, ["cat", "dog"], image_processor=processor.image_processor)
        >>> clf.predict([pil_image])
        ['cat']
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        template: str = DEFAULT_TEMPLATE,
        image_processor=None,
        class_chunk_size: int = 256,
        text_memory_budget: int = DEFAULT_TEXT_MEMORY_BUDGET,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"`template` must contain '{{}}' for the class name, got {template!r}")
        if class_chunk_size < 1:
            raise ValueError(f"`class_chunk_size` must be >= 1, got {class_chunk_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.image_processor = image_processor
        self.class_chunk_size = class_chunk_size
        if isinstance(text_memory_budget, bool) or not isinstance(text_memory_budget, int) or text_memory_budget < 1:
            raise ValueError(f"`text_memory_budget` must be a number of bytes >= 1, got {text_memory_budget!r}")
        self.text_memory_budget = text_memory_budget
        if not isinstance(shared_prefix, bool):
            raise ValueError(f"`shared_prefix` must be True or False, got {shared_prefix!r}")
        self.shared_prefix = shared_prefix
        self._logged_plans: set[tuple] = set()
        self.backbone = backbone_for(model)
        self.text_start = leading_special_tokens(tokenizer)  # context slots follow this tokenizer's start tokens
        if getattr(tokenizer, "padding_side", "right") != "right":  # left pads would shift every slot position
            raise ValueError(
                f"`tokenizer.padding_side` is {tokenizer.padding_side!r}: context slots are found by position after "
                "the start tokens, so prompts must be padded on the right; set `tokenizer.padding_side = 'right'`"
            )
        self._text_cache: tuple[tuple, torch.Tensor] | None = None
        self._zero_shot_cache: tuple[tuple, torch.Tensor] | None = None
        self._ids_cache: tuple[tuple, torch.Tensor] | None = None
        self.set_classnames(classnames)
        self.train(model.training)  # follow the wrapped model's mode instead of nn.Module's default (training)

    # -- class names and prompts --------------------------------------------------------------------------------
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Swap the classes (e.g. base -> new); cached text features are dropped."""
        classnames = [str(name) for name in classnames]
        if not classnames:
            raise ValueError("`classnames` must not be empty")
        self.classnames = classnames
        self._text_cache = None
        self._zero_shot_cache = None

    @property
    def clip(self) -> nn.Module:
        return unwrap_model(self.model)

    def prompt_config(self) -> VLPromptConfig | None:
        configs = enabled_configs(self.model)
        return configs[0][1] if configs else None

    def prompts(self, config: VLPromptConfig | None = None) -> list[str]:
        """The text fed to the text tower for each class under `config` (the template when None)."""
        if config is None:
            return [self.template.format(class_text(name)) for name in self.classnames]
        n_classes = getattr(config, "n_classes", None)
        if getattr(config, "per_class_context", getattr(config, "class_specific", False)) and n_classes != len(
            self.classnames
        ):
            raise ValueError(
                f"the adapter's class-specific context has `n_classes`={n_classes}, but {len(self.classnames)} class "
                "names were given; class-specific context cannot be used for other classes"
            )
        return config.prompt_texts(self.classnames, self.template)

    def tokenize(self, texts: list[str], config: VLPromptConfig | None = None) -> torch.Tensor:
        """Token ids padded as the backbone needs (to the longest prompt under causal text attention, else to the
        full length it was trained with); checks the length per class."""
        pad = {"padding": True} if self.backbone.text_padding == "longest" else {
            "padding": "max_length", "max_length": self.backbone.max_positions}  # fmt: skip
        ids = self.tokenizer(texts, truncation=False, return_tensors="pt", **pad)["input_ids"]
        if ids.shape[1] > self.backbone.max_positions:
            lengths = [len(self.tokenizer(t)["input_ids"]) for t in texts]
            worst = max(range(len(texts)), key=lengths.__getitem__)
            raise ValueError(
                f"the prompt for class {self.classnames[worst]!r} is {lengths[worst]} tokens long, more than the "
                f"model's {self.backbone.max_positions} positions: {texts[worst]!r}"
            )
        # context slots are found by position in the prompt layout (after `text_start`), so any class name works
        return ids

    # -- features -----------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.clip.logit_scale.device

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Normalised text features (C, D), in text-tower calls bounded by `class_chunk_size` and the memory budget."""
        input_ids = input_ids.to(self._device())

        def encode(start: int, stop: int) -> torch.Tensor:
            rows = torch.arange(start, stop, device=input_ids.device)
            with text_rows_for_classes(self.model, rows, self.text_start):
                return self._text_tower(input_ids[start:stop])

        return F.normalize(self._encode_rows(input_ids.shape[0], input_ids.shape[1], encode, "classes"), dim=-1)

    def _text_tower(self, input_ids: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text features of prompt rows; rows of one group (CoCoOp: one image) share their common prefix
        when `shared_prefix` is on and sharing is exact (see `peft_vlprompt.text_prefix`)."""
        if self.shared_prefix:
            features = shared_prefix_text_features(self.model, input_ids, groups)
            if features is not None:
                return features
        out = self.model.get_text_features(input_ids=input_ids)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    # -- memory budget of the text tower ------------------------------------------------------------------------
    def text_row_bytes(self, seq_len: int, keep_for_backward: bool) -> int:
        """Estimated activation bytes of one prompt row in the text tower.

        Per token and layer: ~8 x width (norms, q/k/v, attention output, residuals) + 3 x MLP width + 2 x heads x
        seq_len (attention scores and probabilities); all layers are kept for backward, one at a time otherwise.
        Measured on the toy CLIP with saved-tensor hooks: 122 KB/row against 138 KB estimated.
        """
        text = self.clip.config.text_config
        per_layer = seq_len * (
            8 * text.hidden_size + 3 * text.intermediate_size + 2 * text.num_attention_heads * seq_len
        )
        layers = text.num_hidden_layers if keep_for_backward else 1
        return per_layer * layers * self.clip.logit_scale.element_size()

    def _encode_rows(self, n_rows: int, seq_len: int, encode, what: str) -> torch.Tensor:
        """`encode(start, stop)` over `n_rows` prompt rows, in calls of at most `class_chunk_size` rows and
        `text_memory_budget` bytes. When gradients are needed and all rows' activations would exceed the budget,
        each call is checkpointed (its activations are recomputed in backward): the same numbers, bounded memory."""
        grad = torch.is_grad_enabled()
        per_row = self.text_row_bytes(seq_len, grad)
        chunk = max(1, min(self.class_chunk_size, self.text_memory_budget // per_row))
        recompute = grad and n_rows > chunk and n_rows * per_row > self.text_memory_budget
        plan = (what, grad, chunk, recompute)
        if plan not in self._logged_plans and (recompute or n_rows > chunk):
            self._logged_plans.add(plan)
            logger.info(
                "text tower: %d prompt rows (%s) of %d tokens, ~%s of activations%s (estimated); %d rows per "
                "call (%d calls)%s",
                n_rows, what, seq_len, _size(n_rows * per_row), " kept for backward" if grad else "", chunk,
                -(-n_rows // chunk),
                f", recomputed in backward to stay within `text_memory_budget`={_size(self.text_memory_budget)}"
                if recompute else "",
            )  # fmt: skip
        features = []
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            if recompute:
                features.append(checkpoint(encode, start, stop, use_reentrant=False))
            else:
                features.append(encode(start, stop))
        return torch.cat(features)

    def _adapter_state_key(self) -> tuple:
        state = []
        # every peft tuner layer, not only ours: a LoRA adapter (CLIP-LoRA) changes the template's text features too
        for layer in (m for m in self.model.modules() if isinstance(m, BaseTunerLayer)):
            state.append((id(layer), bool(layer.disable_adapters), bool(layer.merged), tuple(layer.active_adapters)))
            for name, tensor in list(layer.named_parameters()) + list(layer.named_buffers()):
                if not name.startswith("base_layer."):
                    state.append((id(tensor), tensor._version))
        configs = tuple(name for name, _ in enabled_configs(self.model))
        return (tuple(self.classnames), self.template, configs, tuple(state))

    def text_features(self) -> torch.Tensor:
        """Normalised (C, D) features of the current classes under the active adapter."""
        config = self.prompt_config()
        if getattr(config, "image_conditioned", False):
            raise ValueError(
                f"the active adapter ({config.method_name}) conditions the prompts on each image, so there is no "
                "per-class text feature: use `clf(pixel_values)` for logits, or "
                "`clf.conditioned_text_features(clf.image_features(pixel_values))` for (B, C, D) features"
            )
        if self.training:
            self._text_cache = None
            return self.encode_text(self.tokenize(self.prompts(config), config))
        key = self._adapter_state_key()
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                feats = self.encode_text(self.tokenize(self.prompts(config), config))
            self._text_cache = (key, feats)
        return self._text_cache[1]

    def zero_shot_text_features(self) -> torch.Tensor:
        """Normalised template features with every adapter disabled (the zero-shot teacher), computed once."""
        key = (tuple(self.classnames), self.template)
        if self._zero_shot_cache is None or self._zero_shot_cache[0] != key:
            with torch.no_grad(), adapters_disabled(self.model):
                feats = self.encode_text(self.tokenize(self.prompts(None)))
            self._zero_shot_cache = (key, feats.detach())
        return self._zero_shot_cache[1]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised image features (B, D) under the active adapter."""
        if not self.training:  # prediction must not answer class 0 for NaN images (training: the loop checks)
            check_finite([("pixel_values", pixel_values)], "the images cannot be classified", _NONFINITE_HINT)
        out = self.model.get_image_features(**self.backbone.vision_inputs(pixel_values.to(self._device())))
        return F.normalize(out.pooler_output if hasattr(out, "pooler_output") else out, dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.backbone.logit_scale(self.model)

    def conditioned_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised (B, C, D) features of every class prompt conditioned on every image (image-conditioned adapters).

        The B x C rows are encoded image-major in text-tower calls of at most `class_chunk_size` rows (and
        `text_memory_budget` bytes: see `_encode_rows`); each call runs the meta-net only for the images its rows
        belong to. Recomputed on every call (the features depend on the images).
        """
        config = self.prompt_config()
        if not getattr(config, "image_conditioned", False):
            raise ValueError("`conditioned_text_features` needs an active image-conditioned adapter (e.g. CoCoOp)")
        ids = self._prompt_ids(config).to(self._device())
        n_images, n_classes = image_features.shape[0], ids.shape[0]
        n_rows = n_images * n_classes

        def encode(start: int, stop: int) -> torch.Tensor:
            # sets the conditioning itself, so that a checkpointed call recomputes under the same conditioning
            first, last = start // n_classes, (stop - 1) // n_classes  # images whose rows are in this chunk
            rows = torch.arange(start, stop, device=ids.device)
            classes = rows % n_classes
            with (
                image_conditioning(self.model, image_features[first : last + 1], rows // n_classes - first),
                text_rows_for_classes(self.model, classes, self.text_start),
            ):
                return self._text_tower(ids[classes], rows // n_classes - first)

        what = f"{n_images} images x {n_classes} classes"
        features = self._encode_rows(n_rows, ids.shape[1], encode, what)
        return F.normalize(features, dim=-1).view(n_images, n_classes, -1)

    def _prompt_ids(self, config: VLPromptConfig) -> torch.Tensor:
        """Token ids of the current prompts, cached by prompt text (the per-image path asks for them every batch)."""
        texts = self.prompts(config)
        if self._ids_cache is None or self._ids_cache[0] != tuple(texts):
            self._ids_cache = (tuple(texts), self.tokenize(texts, config))
        return self._ids_cache[1]

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits (B, C) from (B, D) image features and (C, D) or per-image (B, C, D) text features."""
        text_features = text_features.to(image_features.dtype)
        if not self.training:  # a NaN logit row argmaxes to class 0: refuse instead of answering
            named = [("image_features", image_features), ("text_features", text_features)]
            check_finite(named, "the logits cannot be computed", _NONFINITE_HINT)
        if text_features.dim() == 3:
            logits = self.logit_scale() * torch.einsum("bd,bcd->bc", image_features, text_features)
        else:
            logits = self.logit_scale() * image_features @ text_features.t()
        bias = self.backbone.logit_bias(self.model)  # sigmoid families (SigLIP); softmax CE ignores it, predict not
        if bias is not None:
            logits = logits + bias
        if not self.training:
            check_finite([("logits", logits)], "the logits are non-finite", "the model's `logit_scale` is not finite")
        return logits

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`logit_scale.exp() * cos(image, class text)`, shape (B, C)."""
        image_features = self.image_features(pixel_values)
        if getattr(self.prompt_config(), "image_conditioned", False):
            return self.logits(image_features, self.conditioned_text_features(image_features))
        return self.logits(image_features, self.text_features())

    @torch.no_grad()
    def predict(self, images, return_index: bool = False) -> list:
        """Class names (or indices) of PIL images / arrays, using the image processor."""
        if self.image_processor is None:
            raise ValueError("`predict` needs an `image_processor` (pass it to PromptClassifier)")
        was_training = self.training
        self.eval()
        try:
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            pred = self(pixels).argmax(-1).tolist()
        finally:
            self.train(was_training)
        return pred if return_index else [self.classnames[i] for i in pred]


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


class adapters_disabled:
    """Context manager: `model.disable_adapter()` for a `PeftModel`, nothing for a plain model."""

    def __init__(self, model: nn.Module) -> None:
        self._ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False
