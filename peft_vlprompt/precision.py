"""Precision of a prompted CLIP: the frozen model in bf16/fp16, the learned tensors in fp32.

Prompt learning trains a few thousand numbers against a frozen model of hundreds of millions. Holding the frozen model
in bf16 halves its memory and time; the learned tensors stay fp32 so that small updates are not rounded away (bf16
keeps 8 mantissa bits: lr x grad below 2^-8 of a weight would vanish). The adapters cast what they inject to the
hidden dtype (DESIGN decision 7), so gradients flow back to the fp32 tensors through those casts.

Documented tolerances, checked on the tiny test CLIP (tests/test_precision.py): with a bf16 frozen model the
image-text cosines behind the logits agree with fp32 within 0.02 (|logits difference| <= 0.02 x `logit_scale.exp()`;
measured <= 0.007, bf16 keeping 8 mantissa bits). With an fp16 frozen model and `torch.amp.GradScaler`, ProGrad's
update equals the fp32 update within 2% of its norm (measured 0.5%); in fp32, the scaler's step equals the unscaled
step exactly, because ProGrad unscales through its shared `param_groups` (see `peft_vlprompt.optim.ProGrad`).
"""

import torch
from torch import nn

FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def frozen_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--dtype` name; the error names what is accepted."""
    if name not in FROZEN_DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(FROZEN_DTYPES)}, got {name!r}")
    return FROZEN_DTYPES[name]


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the frozen parameters of `model` (e.g. a `PeftModel`) to `dtype`, keeping every
    trainable parameter in float32. Call it after the adapter is created (its initial values, e.g. `ctx_init` word
    embeddings, are then taken at full precision). Returns `model`."""
    if dtype not in FROZEN_DTYPES.values():
        raise ValueError(f"`dtype` must be one of {list(FROZEN_DTYPES.values())}, got {dtype!r}")
    for module in model.modules():
        for param in module.parameters(recurse=False):
            target = torch.float32 if param.requires_grad else dtype
            if param.is_floating_point() and param.dtype != target:
                param.data = param.data.to(target)
    return model  # buffers keep their dtype (CLIP's are integer ids; RESTORE's ratios stay fp32)


def learnable_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The dtypes of the trainable parameters (`{torch.float32}` after `cast_frozen`)."""
    return {p.dtype for p in model.parameters() if p.requires_grad}
