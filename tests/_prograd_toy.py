"""Stand-in for a prompt-learning model, shared by `test_prograd.py` and `test_prograd_ddp.py`.

A learnable context tensor (and a learnable feature shift) feed a frozen text encoder; a frozen image encoder gives
image features; logits are scaled cosine similarities. The general direction is the soft cross-entropy to a frozen
teacher with its own fixed class features. `reference_run` re-states the original ProGrad update (two backwards, the
paper's `G_d - lambda * (G_d . G_g / |G_g|^2) G_g`), independently of `peft_vlprompt.optim.ProGrad`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_vlprompt.optim import ProGrad

IN_DIM, N_CTX, CTX_DIM, EMB, N_CLS = 5, 2, 4, 6, 3
BATCH, STEPS, LR, MOMENTUM = 8, 4, 0.5, 0.9


class ToyPromptModel(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.ctx = nn.Parameter(0.5 * torch.randn(N_CTX, CTX_DIM))
        self.shift = nn.Parameter(0.1 * torch.randn(EMB))
        self.register_buffer("class_emb", torch.randn(N_CLS, CTX_DIM))
        self.register_buffer("teacher_text", torch.randn(N_CLS, EMB))
        self.text_enc = nn.Sequential(nn.Linear(N_CTX * CTX_DIM + CTX_DIM, 16), nn.Tanh(), nn.Linear(16, EMB))
        self.image_enc = nn.Linear(IN_DIM, EMB)
        for module in (self.text_enc, self.image_enc):
            module.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text_in = torch.cat([self.ctx.reshape(1, -1).expand(N_CLS, -1), self.class_emb], dim=-1)
        text = F.normalize(self.text_enc(text_in) + self.shift, dim=-1)
        return 10.0 * F.normalize(self.image_enc(images), dim=-1) @ text.T

    def teacher(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return 10.0 * F.normalize(self.image_enc(images), dim=-1) @ F.normalize(self.teacher_text, dim=-1).T


def make_batches(steps: int = STEPS, seed: int = 123) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(BATCH, IN_DIM, generator=g), torch.randint(0, N_CLS, (BATCH,), generator=g)) for _ in range(steps)
    ]


def soft_ce(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """-sum_c softmax(teacher) * log_softmax(student), averaged over the batch (T = 1)."""
    return -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1).mean()


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def reference_run(batches, lambda_: float = 1.0, lrs: list[float] | None = None):
    """The original ProGrad: backward KL (retain graph), stash G_g, backward CE, project per tensor, SGD step."""
    model = ToyPromptModel()
    params = [model.ctx, model.shift]
    sgd = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    n_projected = 0
    for step, (x, y) in enumerate(batches):
        if lrs is not None:
            sgd.param_groups[0]["lr"] = lrs[step]
        logits = model(x)
        sgd.zero_grad()
        soft_ce(logits, model.teacher(x)).backward(retain_graph=True)
        general = [p.grad.clone() for p in params]
        sgd.zero_grad()
        F.cross_entropy(logits, y).backward()
        for p, g_g in zip(params, general):
            g_d = p.grad
            dot = sum(float(a) * float(b) for a, b in zip(g_d.flatten(), g_g.flatten()))
            if dot < 0:
                sq_norm = sum(float(b) ** 2 for b in g_g.flatten())
                p.grad = g_d - lambda_ * (dot / sq_norm) * g_g
                n_projected += 1
        sgd.step()
    return params_of(model), n_projected


def prograd_run(batches, lambda_: float = 1.0):
    """Single process, whole batch, no accelerate."""
    model = ToyPromptModel()
    prograd = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM), lambda_=lambda_)
    fractions = []
    for x, y in batches:
        logits = model(x)
        prograd.add_general_direction(soft_ce(logits, model.teacher(x)))
        F.cross_entropy(logits, y).backward()
        prograd.step()
        prograd.zero_grad()
        fractions.append(prograd.last_stats["prograd/projected_fraction"])
    return params_of(model), fractions


def accelerated_run(accelerator, batches, micro_batches: int, rank: int = 0, world: int = 1, scale_reference=False):
    """Through `accelerator.prepare`/`accumulate`: each rank takes its contiguous shard of every batch, split into
    `micro_batches` micro-batches (the accelerator must have `gradient_accumulation_steps == micro_batches`)."""
    accelerator.step = 0
    model = ToyPromptModel()
    prograd = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM))
    model, optimizer = accelerator.prepare(model, prograd)
    core = accelerator.unwrap_model(model)
    shard = BATCH // world
    micro = shard // micro_batches
    assert shard * world == BATCH and micro * micro_batches == shard
    fractions = []
    for x, y in batches:
        x, y = x[rank * shard : (rank + 1) * shard], y[rank * shard : (rank + 1) * shard]
        for m in range(micro_batches):
            xm, ym = x[m * micro : (m + 1) * micro], y[m * micro : (m + 1) * micro]
            with accelerator.accumulate(model):
                logits = model(xm)
                general = soft_ce(logits, core.teacher(xm))
                if scale_reference:
                    general = accelerator.scaler.scale(general)
                prograd.add_general_direction(general)
                accelerator.backward(F.cross_entropy(logits, ym))
                optimizer.step()
                optimizer.zero_grad()
        fractions.append(prograd.last_stats["prograd/projected_fraction"])
    return params_of(core), fractions


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def cosine_lr(step: int, base: float, t_max: int, eta_min: float) -> float:
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * step / t_max)) / 2
