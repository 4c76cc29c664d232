"""Tokenize a folder of .txt files for scripts/pretrain.py: train.bin, val.bin and meta.json.

    python scripts/prepare_data.py --input books/ --out-dir data/books

Every *.txt file under --input (UTF-8; each file one document) becomes GPT-2 token ids, with
<|endoftext|> between documents, stored as uint16 (pretraining_data.prepare_corpus); the last
--val-fraction of the tokens is the validation split.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the course's root modules

from pretraining_data import prepare_corpus  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="folder of .txt files (searched recursively)")
    p.add_argument("--out-dir", required=True, help="where train.bin, val.bin, meta.json go")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of tokens for val.bin")
    args = p.parse_args(argv)
    try:
        meta = prepare_corpus(args.input, args.out_dir, val_fraction=args.val_fraction)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"prepare_data: {e}")
    print(f"{meta['documents']:,} documents, {meta['bytes']:,} bytes -> {meta['tokens']:,} tokens "
          f"({meta['tokens'] / max(1, meta['bytes']):.3f} per byte): train.bin "
          f"{meta['train_tokens']:,}, val.bin {meta['val_tokens']:,} tokens, in {args.out_dir}")


if __name__ == "__main__":
    main()
