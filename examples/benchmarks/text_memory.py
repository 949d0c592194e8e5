"""Peak memory of one CoCoOp training step (forward + backward) on the toy CLIP with many classes, per text-tower
memory budget (`PromptClassifier(text_memory_budget=...)`).

    python examples/benchmarks/text_memory.py                              # 4 images x 1000 classes
    python examples/benchmarks/text_memory.py --images 32 --budgets 64 0   # the issue's batch (slow on CPU)

Each configuration runs in a fresh process (peak RSS only grows, so it cannot be split within one process) and
reports `ru_maxrss` minus the RSS after loading the model and the image features, i.e. what the step added; on a GPU
it reports `torch.cuda.max_memory_allocated` as well. On CPU, run with `MALLOC_MMAP_THRESHOLD_=65536` to see what
the step needs rather than what glibc keeps after freeing it (its dynamic mmap threshold retains freed chunks).
A budget of 0 means "no budget" (2**62 bytes: every row's activations kept for backward, the behaviour before the
budget). It also checks that the logits of all budgets agree.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def one_step(images: int, classes: int, budget_mb: int) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import CLIPTokenizer

    import peft_vlprompt as pv
    from peft_vlprompt.assets import clip_tokenizer_path
    from peft_vlprompt.toy import load_toy_clip

    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip, _ = load_toy_clip()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = get_peft_model(clip, pv.CoCoOpConfig(n_ctx=4)).to(device)
    budget = 2**62 if budget_mb == 0 else budget_mb * 2**20
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    clf = pv.PromptClassifier(model, tokenizer, [f"object {i}" for i in range(classes)], text_memory_budget=budget)
    pixels = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        feats = clf.image_features(pixels)
    clf._prompt_ids(clf.prompt_config())  # tokenize before the baseline
    clf.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    logits = clf.logits(feats, clf.conditioned_text_features(feats))
    torch.nn.functional.cross_entropy(logits, torch.arange(images, device=device) % classes).backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"images": images, "classes": classes, "budget_mb": budget_mb, "rss_added_mb": (peak - before) / 1024,
           "seconds": round(seconds, 1), "logits": logits.detach().cpu().flatten()[:50].tolist()}  # fmt: skip
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 2048, 64], help="MiB; 0 = no budget.")
    parser.add_argument("--_one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one is not None:
        print(json.dumps(one_step(args.images, args.classes, args._one)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for budget in args.budgets:
        cmd = [sys.executable, __file__, "--images", str(args.images), "--classes", str(args.classes), "--_one",
               str(budget)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"CoCoOp, toy CLIP, {args.images} images x {args.classes} classes = {args.images * args.classes} rows")
    print("| budget | RSS added by the step | seconds |" + (" CUDA peak |" if "cuda_peak_mb" in rows[0] else ""))
    for r in rows:
        budget = "none" if r["budget_mb"] == 0 else f"{r['budget_mb']} MiB"
        cuda = f" {r['cuda_peak_mb']:.0f} MiB |" if "cuda_peak_mb" in r else ""
        print(f"| {budget} | {r['rss_added_mb']:.0f} MiB | {r['seconds']} |{cuda}")
    worst = max(abs(a - b) for r in rows for a, b in zip(r["logits"], rows[0]["logits"]))
    print(f"max |logit difference| between budgets: {worst:.2e}")


if __name__ == "__main__":
    main()
