"""On-policy distillation: the student samples, the teacher scores the student's sequences in one forward
pass, per-token reverse KL on the student's tokens (sampled estimate, discount 0: Tinker / Qwen3).

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/distill_onpolicy.py[:8b]

Variants: `--config.distill.loss=reverse_kl` (full-vocabulary reverse KL) or `generalized_jsd` with
`--config.distill.options='{"beta": 0.5}'` (GKD, lambda = 1); `--config.distill.offpolicy_steps=N` runs N
off-policy iterations first. Shared settings: `distill_base.py`.
"""

import ml_collections as mlc

from vlm_jax.configs.posttrain import base, distill_base


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    size = base.parse_size(arg)
    c = distill_base.distill_config(size, "distill_onpolicy", offpolicy_steps=0,
                                    onpolicy_steps=100 if size == "tiny" else 200)
    c.description = "on-policy distillation: per-token reverse KL to the teacher on the student's samples"
    c.distill.loss = "reverse_kl_sampled"
    c.distill.options = {}
    return c
