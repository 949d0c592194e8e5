"""Convert OpenAI's CLIP BPE file (as shipped in the `open_clip_torch` wheel) to `vocab.json` + `merges.txt`.

The CLIP vocabulary is defined by the BPE merges file: 256 byte symbols, the same 256 symbols with the
end-of-word marker `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>` (49,408 in all).
The output loads with `transformers.CLIPTokenizer` / `CLIPTokenizerFast`. The files are MIT-licensed (OpenAI).

Usage:
    pip download --no-deps -d /tmp/oc open_clip_torch
    python examples/tools/convert_clip_bpe.py /tmp/oc/open_clip_torch-*.whl peft_vlprompt/assets/clip_tokenizer
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # the size CLIP was trained with


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table, in vocabulary order.

    The printable bytes come first and map to themselves; the remaining bytes follow, mapped to 256, 257, ...
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_bpe(source: Path) -> list[str]:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    else:
        raw = source.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return lines[1 : N_MERGES + 1]  # line 0 is the version header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    merges = read_bpe(args.source)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise SystemExit(f"expected 49408 tokens, got {len(vocab)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (args.out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
