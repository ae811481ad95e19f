"""python -m vlm_jax.params [--json]: total, active and vision parameters of every model size, from
shapes alone, next to the published totals of the released Qwen3-VL checkpoints."""

from __future__ import annotations

import json
import sys

from absl import flags

from vlm_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_bool("json", False, "print the rows as JSON instead of a table", flag_values=FLAGS)


def _print_table() -> int:
    from vlm_jax.params.count import table

    rows = table()
    if FLAGS.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'size':<11}{'total':>10}{'active':>10}{'vision':>9}{'published':>11}{'diff':>8}")
    for r in rows:
        pub = f"{r['published_total_B']:.2f}B" if r["published_total_B"] else "-"
        diff = f"{100 * r['rel_diff']:+.1f}%" if "rel_diff" in r else ""
        fmt = (lambda x: f"{x:.3f}B") if r["total_B"] >= 0.1 else (lambda x: f"{x * 1e3:.2f}M")
        print(f"{r['size']:<11}{fmt(r['total_B']):>10}{fmt(r['active_B']):>10}{fmt(r['vision_B']):>9}"
              f"{pub:>11}{diff:>8}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, _print_table, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
