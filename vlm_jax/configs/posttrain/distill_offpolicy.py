"""Off-policy distillation: forward KL KL(p_T || p_S) to the teacher's logits on the world's reference replies
(teacher-forced, the data pipeline's packed batches).

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/distill_offpolicy.py[:8b]

Variants: `--config.distill.offpolicy=samples` trains on teacher-sampled replies (offpolicy_loss "ce": SFT on
teacher outputs, or a logit loss); `--config.distill.onpolicy_steps=N` adds N on-policy iterations after
(the Qwen3 two-stage recipe). Shared settings: `distill_base.py`.
"""

import ml_collections as mlc

from vlm_jax.configs.posttrain import base, distill_base


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    size = base.parse_size(arg)
    c = distill_base.distill_config(size, "distill_offpolicy", offpolicy_steps=100 if size == "tiny" else 500,
                                    onpolicy_steps=0)
    c.description = "off-policy distillation: forward KL to the teacher's logits on reference replies"
    c.distill.offpolicy = "logits"
    c.distill.offpolicy_loss = "forward_kl"
    return c
