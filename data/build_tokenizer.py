"""Builds the synthetic world's byte-level BPE tokenizer, reproducibly.

    python data/build_tokenizer.py            # writes data/synthetic_tokenizer.json and
                                              #        vlm_jax/assets/synthetic_tokenizer.json
    python data/build_tokenizer.py --check    # exit 1 if the committed files are out of date

The vocabulary layout and special-token ids are documented in ``vlm_jax/data/synthetic/vocab.py``.
The build is deterministic: same world (default config, seed 0) -> byte-identical file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = (
    ROOT / "data" / "synthetic_tokenizer.json",
    ROOT / "vlm_jax" / "assets" / "synthetic_tokenizer.json",
)


def main(argv: list[str] | None = None) -> int:
    """Builds (or with --check verifies) the tokenizer files; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))
    from tokenizers import Tokenizer

    from vlm_jax.data.synthetic.vocab import SPECIAL_TOKENS, build_tokenizer_json

    text = build_tokenizer_json()
    status = 0
    for out in OUTPUTS:
        if args.check:
            ok = out.exists() and out.read_text(encoding="utf-8") == text
            print(f"{out.relative_to(ROOT)}: {'up to date' if ok else 'OUT OF DATE'}")
            status |= not ok
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"wrote {out.relative_to(ROOT)}")
    tok = Tokenizer.from_str(text)
    print(f"vocab size {tok.get_vocab_size()} (specials at ids 0..{len(SPECIAL_TOKENS) - 1})")
    return status


if __name__ == "__main__":
    sys.exit(main())
