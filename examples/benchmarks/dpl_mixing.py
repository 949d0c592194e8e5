"""Benchmark: DPL supernet search-step time, efficient candidate mixing vs the naive one attention per candidate.

Both are measured in the same run on the same ViT-B/16-sized CLIP built from its config (random weights: text 512 wide
x 12 layers, vision 768 x 12, patch 16, 224 px), with the released search space (lengths 0..6 in every layer of both
towers). One search step = an alpha step on a validation batch + a prompt step on a training batch (forward and
backward each), exactly what `peft_vlprompt.dpl.DPLSearch` runs. The outputs of the two mixings are compared too.

    python examples/benchmarks/dpl_mixing.py                       # batch 2, 10 classes, 2 timed steps (CPU: minutes)
    python examples/benchmarks/dpl_mixing.py --batch_size 4 --classes 100 --steps 5 --device cuda
"""

import argparse
import logging
import statistics
import tempfile
import time

import torch
from peft import get_peft_model
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from peft_vlprompt import DPLSearchConfig, PromptClassifier
from peft_vlprompt.assets import clip_tokenizer_path
from peft_vlprompt.dpl import DPLSearch, DPLSearchArguments
from peft_vlprompt.tuners.dpl import set_mixing

logger = logging.getLogger("dpl_mixing")


def vit_b16_clip(attn: str) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, vocab_size=49408, eos_token_id=49407, bos_token_id=49406,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16),
        projection_dim=512,
    )  # fmt: skip
    config._attn_implementation = attn
    return CLIPModel(config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=2, help="Images per alpha step and per prompt step.")
    parser.add_argument("--classes", type=int, default=10, help="Number of class prompts encoded per step.")
    parser.add_argument("--steps", type=int, default=2, help="Timed search steps per mixing (after 1 warm-up step).")
    parser.add_argument("--max_length", type=int, default=6, help="Candidates 0..max_length in every layer.")
    parser.add_argument("--attn", default="sdpa", choices=["eager", "sdpa"], help="Base attention implementation.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = vit_b16_clip(args.attn)
    candidates = list(range(args.max_length + 1))
    model = get_peft_model(clip, DPLSearchConfig(text_candidates=candidates, vision_candidates=candidates))
    model.to(args.device)
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    classnames = [f"class number {i}" for i in range(args.classes)]
    classifier = PromptClassifier(model, tokenizer, classnames)
    g = torch.Generator().manual_seed(1)
    data = [
        {"pixel_values": torch.randn(3, 224, 224, generator=g), "labels": i % args.classes}
        for i in range(args.batch_size * (args.steps + 1))
    ]
    batches = [
        {
            "pixel_values": torch.stack([d["pixel_values"] for d in data[i : i + args.batch_size]]),
            "labels": torch.tensor([d["labels"] for d in data[i : i + args.batch_size]]),
        }
        for i in range(0, len(data), args.batch_size)
    ]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"ViT-B/16-sized CLIP, {args.attn}, {args.device}, threads {torch.get_num_threads()}: batch "
          f"{args.batch_size}, {args.classes} classes, candidates 0..{args.max_length} per layer x 24 layers, "
          f"{trainable:,} supernet parameters")  # fmt: skip

    # outputs of the two mixings on the same weights
    with torch.no_grad():
        pixels = batches[0]["pixel_values"].to(args.device)
        set_mixing(model, "efficient")
        efficient_logits = classifier(pixels)
        set_mixing(model, "naive")
        naive_logits = classifier(pixels)
    diff = (efficient_logits - naive_logits).abs().max().item()
    print(f"max |logits(efficient) - logits(naive)| = {diff:.2e}")

    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "dpl_" in k}
    times = {}
    for mixing in ("efficient", "naive"):
        model.load_state_dict(state, strict=False)  # every mixing starts from the same supernet
        set_mixing(model, mixing)
        with tempfile.TemporaryDirectory() as tmp:
            search = DPLSearch(model, classifier, data, data, DPLSearchArguments(batch_size=args.batch_size), tmp)
            per_step = []
            for i, batch in enumerate(batches):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                search.step(batch)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:  # the first step warms up
                    per_step.append(time.perf_counter() - start)
        times[mixing] = statistics.median(per_step)
        print(f"{mixing:>9}: {times[mixing]:.3f} s per search step (median of {len(per_step)}; "
              f"{', '.join(f'{t:.3f}' for t in per_step)})")  # fmt: skip
    ratio = times["naive"] / times["efficient"]
    print(f"speed-up of efficient mixing over naive (naive / efficient step time): {ratio:.2f}x")
    return {"times": times, "ratio": ratio, "max_logit_diff": diff}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
