"""Builds the synthetic world's byte-level BPE tokenizer, reproducibly.

    python data/build_tokenizer.py            # writes data/synthetic_tokenizer.json and
                                              #        vlm_jax/assets/synthetic_tokenizer.json
    python data/build_tokenizer.py --check    # exit 1 if the committed files are out of date

The vocabulary layout and special-token ids are documented in ``vlm_jax/data/synthetic/vocab.py``.
The build is deterministic: same world (default config, seed 0) -> byte-identical file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402

OUTPUTS = (
    ROOT / "data" / "synthetic_tokenizer.json",
    ROOT / "vlm_jax" / "assets" / "synthetic_tokenizer.json",
)


FLAGS = flags.FlagValues()
flags.DEFINE_bool("check", False, "verify the files instead of writing them", flag_values=FLAGS)


def run(args: flags.FlagValues) -> int:
    """Builds (or with --check verifies) the tokenizer files; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def main(argv: list[str] | None = None) -> int:
    """Runs the build on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
