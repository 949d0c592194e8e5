"""Training-step time (and peak GPU memory) of the package's path vs the straightforward one, in the same run.

    python examples/benchmarks/step_time.py                        # ViT-B/16-sized CLIP, 100 classes, batch 8
    python examples/benchmarks/step_time.py --batch 32 --steps 5   # the papers' batch, on a GPU

The CLIP is built from a config with random weights (text 512 x 12 layers, vision 768 x 12 layers, patch 16,
224 px, by default; sizes are flags). For each method the same adapter is trained one step at a time by

- straightforward: prompts padded to 77 tokens, the zero-shot teacher (ProGrad) recomputed by a full second CLIP
  forward with the adapter disabled, the image tower run on every step;
- package: `PromptClassifier` padding to the longest prompt, the teacher's text features computed once, and the
  training forward of `peft_vlprompt.training.TrainingModule`;
- package + cache (methods that leave the image tower frozen): also the frozen image features cached once
  (`--cache_image_features`), so a step runs no image tower at all.

It prints seconds per step and the ratios straightforward / package. Peak memory is `torch.cuda.max_memory_allocated`
on a GPU; on CPU it is not measured (`tracemalloc` does not see torch's allocator and the process RSS only grows, so
it cannot be split per configuration).
"""

import argparse
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
from peft_vlprompt.optim import ProGrad
from peft_vlprompt.training import TrainingModule
from peft_vlprompt.training.objectives import Objective, ProGradObjective, RestoreObjective

WORDS_A = ["red", "small", "wild", "old", "striped", "golden", "tiny", "spotted", "white", "black"]
WORDS_B = ["fox", "sports car", "tabby cat", "fighter jet", "oak tree", "river", "pizza", "guitar", "tulip", "house"]
METHODS = ("coop", "prograd", "ivlp", "restore")


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
    from peft_vlprompt import CoOpConfig
    from peft_vlprompt.tuners.deep_prompt.presets import depth_lengths, ivlp_preset
    from peft_vlprompt.tuners.restore import RestoreAdapterConfig

    if method in ("coop", "prograd"):
        return CoOpConfig(n_ctx=16)
    if method == "ivlp":
        return ivlp_preset(clip)  # 2 + 2 prompts, depth 12
    layers = clip.config.text_config.num_hidden_layers
    return RestoreAdapterConfig(text_lengths=depth_lengths(2, 9, layers),
                                vision_lengths=depth_lengths(2, min(9, layers), clip.config.vision_config.num_hidden_layers))  # fmt: skip


def objective_for(method: str) -> Objective:
    return {"prograd": ProGradObjective(), "restore": RestoreObjective()}.get(method, Objective())


def text_ids_77(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"].to(device)


def pooled(out) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


class Runner:
    """One method's adapter, optimizer and the three step functions."""

    def __init__(self, method: str, args, tokenizer, names, device):
        clip = build_clip(args).to(device)
        self.method, self.device = method, device
        self.model = get_peft_model(clip, adapter_config(method, clip))
        self.clf = PromptClassifier(self.model, tokenizer, names, class_chunk_size=args.chunk)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.prograd = ProGrad(torch.optim.SGD(params, lr=1e-3, momentum=0.9)) if method == "prograd" else None
        self.optimizer = self.prograd or torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        self.objective = objective_for(method)
        self.vision_prompted = method in ("ivlp", "restore")
        self.clf.eval()
        self.objective.prepare(self.clf, self.vision_prompted)
        self.module = TrainingModule(self.clf, self.objective).train()
        config = self.clf.prompt_config()
        self.ids77 = text_ids_77(tokenizer, self.clf.prompts(config), device)
        self.zs_ids77 = text_ids_77(tokenizer, self.clf.prompts(None), device)
        g = torch.Generator().manual_seed(1)
        self.pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
        self.labels = torch.randint(0, len(names), (args.batch,), generator=g).to(device)
        self.cached = None
        if not self.vision_prompted:
            with torch.no_grad():
                self.cached = self.clf.image_features(self.pixels)

    def _update(self, loss, direction=None):
        if direction is not None:
            self.prograd.add_general_direction(direction)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def straightforward(self):
        model = self.model
        text = F.normalize(pooled(model.get_text_features(input_ids=self.ids77)), dim=-1)
        image = F.normalize(pooled(model.get_image_features(pixel_values=self.pixels)), dim=-1)
        logits = model.base_model.model.logit_scale.exp() * image @ text.t()
        loss = F.cross_entropy(logits, self.labels)
        direction = None
        if self.method == "prograd":  # the teacher: a full second CLIP forward with the adapter disabled
            with torch.no_grad(), adapters_disabled(model):
                teacher = model(input_ids=self.zs_ids77, pixel_values=self.pixels).logits_per_image
            target = F.softmax(teacher, dim=-1)
            direction = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        if self.method == "restore":
            from peft_vlprompt.losses.restore import restore_losses

            loss = loss + restore_losses(model)["restore_fs"]
        self._update(loss, direction)

    def package(self, cached: bool = False):
        batch = {"labels": self.labels}
        batch["image_features" if cached else "pixel_values"] = self.cached if cached else self.pixels
        terms = self.module(**batch)["terms"]
        loss = sum(v for k, v in terms.items() if k not in self.objective.direction_terms)
        direction = terms.get("prograd_kl")
        self._update(loss, direction)

    def package_cached(self):
        self.package(cached=True)


def measure(fn, steps: int, device) -> tuple[float, float | None]:
    fn()  # warm-up (allocator, lazy init)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated subset of {METHODS}.")
    parser.add_argument("--batch", type=int, default=8, help="Images per step.")
    parser.add_argument("--classes", type=int, default=100, help="Number of classes (text prompts per step).")
    parser.add_argument("--steps", type=int, default=1, help="Timed steps per configuration (after 1 warm-up).")
    parser.add_argument("--chunk", type=int, default=256, help="Classes per text-encoder call (package path).")
    parser.add_argument("--text_width", type=int, default=512, help="Text tower width (ViT-B/16: 512).")
    parser.add_argument("--text_layers", type=int, default=12, help="Text tower layers (ViT-B/16: 12).")
    parser.add_argument("--vision_width", type=int, default=768, help="Vision tower width (ViT-B/16: 768).")
    parser.add_argument("--vision_layers", type=int, default=12, help="Vision tower layers (ViT-B/16: 12).")
    parser.add_argument("--image_size", type=int, default=224, help="Image size (ViT-B/16: 224).")
    parser.add_argument("--patch_size", type=int, default=16, help="Patch size (ViT-B/16: 16).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    names = classnames(args.classes)
    print(f"device {device}, batch {args.batch}, {args.classes} classes, {args.steps} timed steps, "
          f"text {args.text_width}x{args.text_layers}, vision {args.vision_width}x{args.vision_layers} "
          f"@ {args.image_size}px/{args.patch_size}", flush=True)  # fmt: skip
    results = {}
    for method in args.methods.split(","):
        try:
            runner = Runner(method, args, tokenizer, names, device)
        except Exception as e:  # report and go on: one broken adapter should not hide the others' numbers
            print(f"  {method}: could not build the adapter: {type(e).__name__}: {e}", flush=True)
            continue
        row = {"straightforward": measure(runner.straightforward, args.steps, device),
               "package": measure(runner.package, args.steps, device)}  # fmt: skip
        if runner.cached is not None:
            row["package + cache"] = measure(runner.package_cached, args.steps, device)
        longest = runner.clf.tokenize(runner.clf.prompts(runner.clf.prompt_config()), runner.clf.prompt_config())
        row["tokens"] = (longest.shape[1], 77)
        results[method] = row
        times = ", ".join(f"{k} {v[0]:.3f}s" for k, v in row.items() if k != "tokens")
        print(f"  {method}: {times}", flush=True)
    print(f"\n{'method':10s} {'path':18s} {'s/step':>8s} {'peak MiB':>9s} {'straightforward / this':>22s}")
    for method, row in results.items():
        base = row["straightforward"][0]
        for path in ("straightforward", "package", "package + cache"):
            if path not in row:
                continue
            t, peak = row[path]
            mem = "-" if peak is None else f"{peak:.0f}"
            print(f"{method:10s} {path:18s} {t:8.3f} {mem:>9s} {base / t:21.2f}x")
        print(f"{'':10s} (text tokens: {row['tokens'][0]} longest vs {row['tokens'][1]})")
    if device.type == "cpu":
        print("\npeak memory: not measured on CPU (see the module docstring)")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
