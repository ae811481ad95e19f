"""Parameter counts per model config, from shapes alone (nothing is allocated).

`python -m vlm_jax.params` prints total and active parameters for every size, next to the
published totals of the released Qwen3-VL checkpoints.
"""

from __future__ import annotations

import json
import sys

import flax.linen as nn
import jax
import ml_collections as mlc
import numpy as np

from vlm_jax.configs import model as model_configs
from vlm_jax.model.vlm import param_shapes


def count_params(config: mlc.ConfigDict) -> dict:
    """{"total", "active", "vision", "text"}: active counts only top-k of the experts."""
    shapes = nn.unbox(param_shapes(config))
    sizes = {"/".join(str(getattr(k, "key", k)) for k in path): int(np.prod(leaf.shape))
             for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    total = sum(sizes.values())
    vision = sum(n for p, n in sizes.items() if p.startswith(("vision/", "merger/", "deepstack_mergers_")))
    t = config.text
    expert = sum(n for p, n in sizes.items() if p.split("/")[-1] in ("wi_gate", "wi_up", "wo"))
    active = total - (expert * (t.num_experts - t.num_experts_per_tok) // t.num_experts if t.num_experts else 0)
    return {"total": total, "active": active, "vision": vision, "text": total - vision}


def table() -> list[dict]:
    rows = []
    for size in model_configs.SIZES:
        n = count_params(model_configs.get_config(size))
        published = model_configs.PUBLISHED_TOTAL_B.get(size)
        row = {"size": size, "total_B": n["total"] / 1e9, "active_B": n["active"] / 1e9,
               "vision_B": n["vision"] / 1e9, "published_total_B": published}
        if published:
            row["rel_diff"] = n["total"] / 1e9 / published - 1
        rows.append(row)
    return rows


def main(argv: list[str]) -> None:
    rows = table()
    if "--json" in argv:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'size':<11}{'total':>10}{'active':>10}{'vision':>9}{'published':>11}{'diff':>8}")
    for r in rows:
        pub = f"{r['published_total_B']:.2f}B" if r["published_total_B"] else "-"
        diff = f"{100 * r['rel_diff']:+.1f}%" if "rel_diff" in r else ""
        fmt = (lambda x: f"{x:.3f}B") if r["total_B"] >= 0.1 else (lambda x: f"{x * 1e3:.2f}M")
        print(f"{r['size']:<11}{fmt(r['total_B']):>10}{fmt(r['active_B']):>10}{fmt(r['vision_B']):>9}"
              f"{pub:>11}{diff:>8}")


if __name__ == "__main__":
    main(sys.argv[1:])
