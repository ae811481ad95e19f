"""Parameter counts per model config, from shapes alone (nothing is allocated).

`table()` lists total and active parameters for every size, next to the published totals of the
released Qwen3-VL checkpoints (`python -m vlm_jax.params` prints it).
"""

from __future__ import annotations

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
