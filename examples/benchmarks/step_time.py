"""Training-step time (and peak GPU memory) of the package's paths vs the straightforward one, in the same run.

    python examples/benchmarks/step_time.py                        # ViT-B/16-sized CLIP, 100 classes, batch 8
    python examples/benchmarks/step_time.py --batch 32 --steps 5   # the papers' batch, on a GPU
    python examples/benchmarks/step_time.py --gpu_suite            # GPU: B/16 and L/14 sizes, 100/1000 classes,
                                                                   # fp32/bf16/fp16, step time and peak memory

The CLIP is built from a config with random weights (text 512 x 12 layers, vision 768 x 12 layers, patch 16,
224 px, by default; sizes are flags). For each method the same adapter is trained one step at a time by

- straightforward: prompts padded to 77 tokens, the zero-shot teacher (ProGrad) recomputed by a full second CLIP
  forward with the adapter disabled, the image tower run on every step;
- package: `PromptClassifier` padding to the longest prompt, the teacher's text features computed once, and the
  training forward of `peft_vlprompt.training.TrainingModule`;
- package + cache (methods that leave the image tower frozen): also the frozen image features cached once
  (`--cache_image_features`), so a step runs no image tower at all;
- shared / shared + cache: the same two with `PromptClassifier(shared_prefix=True)`, which encodes the prompt prefix
  every class shares once per step (`peft_vlprompt.text_prefix`); "package" is `shared_prefix=False`.

CoCoOp's straightforward path (B x C prompts at 77 tokens) takes minutes per step on a CPU, so it runs only with
`--cocoop_straightforward`. It prints seconds per step and the ratios straightforward / path and package / shared.
Peak memory is `torch.cuda.max_memory_allocated` on a GPU; on CPU it is not measured (`tracemalloc` does not see torch's allocator and the process RSS only grows, so
it cannot be split per configuration).
"""

import argparse
import copy
import functools
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from peft_vlprompt import PromptClassifier
from peft_vlprompt.assets import clip_tokenizer_path
from peft_vlprompt.classifier import adapters_disabled
from peft_vlprompt.losses.kgcoop import kgcoop_loss
from peft_vlprompt.optim import ProGrad
from peft_vlprompt.precision import cast_frozen
from peft_vlprompt.training import TrainingModule
from peft_vlprompt.training.objectives import KgCoOpObjective, Objective, ProGradObjective, RestoreObjective
from peft_vlprompt.tuners.cocoop.layer import image_conditioning

WORDS_A = ["red", "small", "wild", "old", "striped", "golden", "tiny", "spotted", "white", "black"]
WORDS_B = ["fox", "sports car", "tabby cat", "fighter jet", "oak tree", "river", "pizza", "guitar", "tulip", "house"]
METHODS = ("coop", "prograd", "kgcoop", "cocoop", "ivlp", "maple", "restore")
PATHS = ("straightforward", "package", "shared", "package + cache", "shared + cache")


def build_clip(args) -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=args.text_width, intermediate_size=4 * args.text_width,
                         num_hidden_layers=args.text_layers, num_attention_heads=args.text_width // 64,
                         max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407),
        vision_config=dict(image_size=args.image_size, patch_size=args.patch_size, hidden_size=args.vision_width,
                           intermediate_size=4 * args.vision_width, num_hidden_layers=args.vision_layers,
                           num_attention_heads=args.vision_width // 64),
        projection_dim=args.text_width,
    )  # fmt: skip
    return CLIPModel(config).eval()


def classnames(n: int) -> list[str]:
    """n distinct 1-3 word names (realistic prompt lengths)."""
    names = [f"{a} {b}" for a in WORDS_A for b in WORDS_B] + WORDS_B
    while len(names) < n:
        names += [f"{a} {b} {len(names)}" for a in WORDS_A for b in WORDS_B]
    return names[:n]


def adapter_config(method: str, clip: CLIPModel):
    from peft_vlprompt import CoCoOpConfig, CoOpConfig, KgCoOpConfig
    from peft_vlprompt.tuners.deep_prompt.presets import depth_lengths, ivlp_preset, maple_preset
    from peft_vlprompt.tuners.restore import RestoreAdapterConfig

    if method in ("coop", "prograd"):
        return CoOpConfig(n_ctx=16)
    if method == "kgcoop":
        return KgCoOpConfig(ctx_init="a photo of a")  # the released KgCoOp context
    if method == "cocoop":
        return CoCoOpConfig(ctx_init="a photo of a")  # the released CoCoOp context
    if method == "ivlp":
        return ivlp_preset(clip)  # 2 + 2 prompts, depth 12
    if method == "maple":
        return maple_preset(clip, depth=min(9, clip.config.text_config.num_hidden_layers))
    layers = clip.config.text_config.num_hidden_layers
    return RestoreAdapterConfig(text_lengths=depth_lengths(2, 9, layers),
                                vision_lengths=depth_lengths(2, min(9, layers), clip.config.vision_config.num_hidden_layers))  # fmt: skip


def objective_for(method: str) -> Objective:
    special = {"prograd": ProGradObjective, "restore": RestoreObjective, "kgcoop": KgCoOpObjective}
    return special.get(method, Objective)()


def text_ids_77(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"].to(device)


def pooled(out) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


class Runner:
    """One method's adapter, optimizer and its step functions (frozen model in `dtype`, learnable tensors in fp32)."""

    def __init__(self, method: str, args, tokenizer, names, device, dtype=torch.float32, clip=None):
        clip = (clip if clip is not None else build_clip(args)).to(device)
        self.method, self.device = method, device
        self.model = cast_frozen(get_peft_model(clip, adapter_config(method, clip)), dtype)
        self.clf = PromptClassifier(self.model, tokenizer, names, class_chunk_size=args.chunk)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.prograd = ProGrad(torch.optim.SGD(params, lr=1e-3, momentum=0.9)) if method == "prograd" else None
        self.optimizer = self.prograd or torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        # fp16 frozen model: loss scaling (ProGrad unscales through the shared param_groups, see its docstring)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.objective = objective_for(method)
        self.vision_prompted = method in ("ivlp", "maple", "restore")
        self.conditioned = method == "cocoop"
        self.clf.eval()
        self.objective.prepare(self.clf, self.vision_prompted)
        self.module = TrainingModule(self.clf, self.objective).train()
        config = self.clf.prompt_config()
        self.ids77 = text_ids_77(tokenizer, self.clf.prompts(config), device)
        self.zs_ids77 = text_ids_77(tokenizer, self.clf.prompts(None), device)
        g = torch.Generator().manual_seed(1)
        self.pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device, dtype)
        self.labels = torch.randint(0, len(names), (args.batch,), generator=g).to(device)
        self.cached = None
        if not self.vision_prompted:
            with torch.no_grad():
                self.cached = self.clf.image_features(self.pixels)
        if method == "kgcoop":  # the released code computes the teacher's text features once, at 77 tokens
            with torch.no_grad(), adapters_disabled(self.model):
                self.kg_teacher = F.normalize(pooled(self.model.get_text_features(input_ids=self.zs_ids77)), dim=-1)

    def _update(self, loss, direction=None):
        if self.scaler is not None:
            loss, direction = self.scaler.scale(loss), None if direction is None else self.scaler.scale(direction)
        if direction is not None:
            self.prograd.add_general_direction(direction)
        loss.backward()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad()

    def _text77(self, image: torch.Tensor) -> torch.Tensor:
        if not self.conditioned:
            return F.normalize(pooled(self.model.get_text_features(input_ids=self.ids77)), dim=-1)
        n_images, n_classes = image.shape[0], self.ids77.shape[0]
        rows = torch.arange(n_images * n_classes, device=self.device)
        with image_conditioning(self.model, image, rows // n_classes):  # every (image, class) prompt, 77 tokens
            text = pooled(self.model.get_text_features(input_ids=self.ids77[rows % n_classes]))
        return F.normalize(text, dim=-1).view(n_images, n_classes, -1)

    def straightforward(self):
        model = self.model
        image = F.normalize(pooled(model.get_image_features(pixel_values=self.pixels)), dim=-1)
        text = self._text77(image)
        scale = model.base_model.model.logit_scale.exp()
        logits = scale * (torch.einsum("bd,bcd->bc", image, text) if text.dim() == 3 else image @ text.t())
        loss = F.cross_entropy(logits.float(), self.labels)
        direction = None
        if self.method == "prograd":  # the teacher: a full second CLIP forward with the adapter disabled
            with torch.no_grad(), adapters_disabled(model):
                teacher = model(input_ids=self.zs_ids77, pixel_values=self.pixels).logits_per_image
            target = F.softmax(teacher.float(), dim=-1)
            direction = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        if self.method == "kgcoop":
            loss = loss + sum(kgcoop_loss(text.float(), self.kg_teacher.float(), weight=8.0).values())
        if self.method == "restore":
            from peft_vlprompt.losses.restore import restore_losses

            loss = loss + restore_losses(model)["restore_fs"]
        self._update(loss, direction)

    def package(self, cached: bool = False, shared: bool = False):
        self.clf.shared_prefix = shared
        batch = {"labels": self.labels}
        batch["image_features" if cached else "pixel_values"] = self.cached if cached else self.pixels
        terms = self.module(**batch)["terms"]
        loss = sum(v for k, v in terms.items() if k not in self.objective.direction_terms)
        direction = terms.get("prograd_kl")
        self._update(loss, direction)

    def path(self, name: str):
        """The step function of path `name` (see PATHS), or None where it does not apply."""
        if name == "straightforward":
            return self.straightforward
        cached = name.endswith("+ cache")
        if cached and self.cached is None:
            return None
        return functools.partial(self.package, cached=cached, shared=name.startswith("shared"))


def measure_paths(steps_by_path: dict, steps: int, device) -> dict:
    """{path: (median seconds per step, peak GPU MiB or None)}. After one warm-up step each, the paths' timed steps
    are interleaved round by round, so a change of machine load during the run affects every path alike."""
    cuda = device.type == "cuda"
    for step in steps_by_path.values():
        step()  # warm-up (allocator, lazy init)
    times = {name: [] for name in steps_by_path}
    peaks = dict.fromkeys(steps_by_path)
    for _ in range(steps):
        for name, step in steps_by_path.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = max(peaks[name] or 0.0, torch.cuda.max_memory_allocated() / 2**20)
            times[name].append(time.perf_counter() - t)
    return {name: (statistics.median(times[name]), peaks[name]) for name in steps_by_path}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {METHODS}.")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"Comma-separated subset of {PATHS}.")
    parser.add_argument("--batch", type=int, default=8, help="Images per step.")
    parser.add_argument("--classes", type=int, default=100, help="Number of classes (text prompts per step).")
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="Timed steps per path (after 1 warm-up), interleaved across the paths; the median counts.",
    )
    parser.add_argument("--chunk", type=int, default=256, help="Classes per text-encoder call (package path).")
    parser.add_argument("--text_width", type=int, default=512, help="Text tower width (ViT-B/16: 512).")
    parser.add_argument("--text_layers", type=int, default=12, help="Text tower layers (ViT-B/16: 12).")
    parser.add_argument("--vision_width", type=int, default=768, help="Vision tower width (ViT-B/16: 768).")
    parser.add_argument("--vision_layers", type=int, default=12, help="Vision tower layers (ViT-B/16: 12).")
    parser.add_argument("--image_size", type=int, default=224, help="Image size (ViT-B/16: 224).")
    parser.add_argument("--patch_size", type=int, default=16, help="Patch size (ViT-B/16: 16).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument(
        "--cocoop_straightforward",
        action="store_true",
        help="Also time CoCoOp's straightforward path (B x C prompts at 77 tokens; minutes on CPU).",
    )
    parser.add_argument(
        "--gpu_suite",
        action="store_true",
        help="GPU: B/16 and L/14 sizes x 100/1000 classes x fp32/bf16/fp16 (package vs shared, "
        "cached image features), step time and peak memory; meant to finish in < 5 min.",
    )
    args = parser.parse_args(argv)
    for flag, value, choices in (("--methods", args.methods, METHODS), ("--paths", args.paths, PATHS)):
        bad = [v for v in value.split(",") if v not in choices]
        if bad:
            parser.error(f"{flag}: unknown {bad}; choose from {choices}")
    return args


def run_methods(args, tokenizer, names, device, dtype=torch.float32, clip=None) -> dict:
    results = {}
    paths = args.paths.split(",")
    for method in args.methods.split(","):
        try:
            # a fresh copy per method: get_peft_model wraps the model it is given in place
            runner = Runner(
                method, args, tokenizer, names, device, dtype, None if clip is None else copy.deepcopy(clip)
            )
        except Exception as e:  # report and go on: one broken adapter should not hide the others' numbers
            print(f"  {method}: could not build the adapter: {type(e).__name__}: {e}", flush=True)
            continue
        steps = {name: runner.path(name) for name in paths}
        if method == "cocoop" and not args.cocoop_straightforward:
            steps.pop("straightforward", None)
        row = measure_paths({name: step for name, step in steps.items() if step is not None}, args.steps, device)
        print(f"  {method}: " + ", ".join(f"{name} {t:.3f}s" for name, (t, _) in row.items()), flush=True)
        longest = runner.clf.tokenize(runner.clf.prompts(runner.clf.prompt_config()), runner.clf.prompt_config())
        row["tokens"] = (longest.shape[1], 77)
        results[method] = row
        del runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def print_table(results: dict) -> None:
    print(f"\n{'method':8s} {'path':16s} {'s/step':>8s} {'peak MiB':>9s} {'straightforward/this':>21s} "
          f"{'package/shared':>15s}")  # fmt: skip
    for method, row in results.items():
        base = row.get("straightforward", (None,))[0]
        for path in PATHS:
            if path not in row:
                continue
            t, peak = row[path]
            mem = "-" if peak is None else f"{peak:.0f}"
            vs_base = "-" if base is None else f"{base / t:.2f}x"
            current = row.get(path.replace("shared", "package"), (None,))[0] if path.startswith("shared") else None
            vs_current = "-" if current is None else f"{current / t:.2f}x"
            print(f"{method:8s} {path:16s} {t:8.3f} {mem:>9s} {vs_base:>21s} {vs_current:>15s}")
        print(f"{'':8s} (text tokens: {row['tokens'][0]} longest vs {row['tokens'][1]})")


GPU_SIZES = {  # (text width, text layers, vision width, vision layers, patch)
    "ViT-B/16": (512, 12, 768, 12, 16),
    "ViT-L/14": (768, 12, 1024, 24, 14),
}
GPU_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gpu_suite(args, tokenizer, device) -> dict:
    """Step time and `torch.cuda.max_memory_allocated` of the package vs shared path (image features cached) for
    CoOp, ProGrad, KgCoOp and CoCoOp at two model sizes, two class counts and three frozen-model dtypes."""
    args.paths, args.steps = "package + cache,shared + cache", max(args.steps, 3)
    args.methods = ",".join(m for m in args.methods.split(",") if m in ("coop", "prograd", "kgcoop", "cocoop"))
    results = {}
    for size, (tw, tl, vw, vl, patch) in GPU_SIZES.items():
        args.text_width, args.text_layers, args.patch_size = tw, tl, patch
        args.vision_width, args.vision_layers = vw, vl
        with torch.device(device):
            clip = build_clip(args)  # built once per size, copied per (dtype, method)
        for n_classes in (100, 1000):
            names = classnames(n_classes)
            for dtype_name, dtype in GPU_DTYPES.items():
                print(f"{size}, {n_classes} classes, {dtype_name}:", flush=True)
                rows = run_methods(args, tokenizer, names, device, dtype, clip=clip)
                results[(size, n_classes, dtype_name)] = rows
        del clip
    print(f"\n{'size':9s} {'classes':>7s} {'dtype':5s} {'method':8s} {'package s':>9s} {'MiB':>7s} {'shared s':>9s} "
          f"{'MiB':>7s} {'speed-up':>8s}")  # fmt: skip
    for (size, n_classes, dtype_name), rows in results.items():
        for method, row in rows.items():
            (tp, mp), (ts, ms) = row["package + cache"], row["shared + cache"]
            mp, ms = ("-" if m is None else f"{m:.0f}" for m in (mp, ms))
            print(f"{size:9s} {n_classes:7d} {dtype_name:5s} {method:8s} {tp:9.4f} {mp:>7s} {ts:9.4f} {ms:>7s} "
                  f"{tp / ts:7.2f}x")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    if args.gpu_suite:
        if device.type != "cuda":
            raise SystemExit("--gpu_suite needs a CUDA GPU (torch.cuda.is_available() is False)")
        print(f"device {torch.cuda.get_device_name()}, batch {args.batch}", flush=True)
        return gpu_suite(args, tokenizer, device)
    names = classnames(args.classes)
    print(f"device {device}, batch {args.batch}, {args.classes} classes, {args.steps} timed steps, "
          f"text {args.text_width}x{args.text_layers}, vision {args.vision_width}x{args.vision_layers} "
          f"@ {args.image_size}px/{args.patch_size}", flush=True)  # fmt: skip
    results = run_methods(args, tokenizer, names, device)
    print_table(results)
    if device.type == "cpu":
        print("\npeak memory: not measured on CPU (see the module docstring)")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
