"""RL with GRPO: token PPO-clip, eps 0.2, KL penalty beta = 0.04 (k3, in the loss; DeepSeekMath),
sequence-mean of token means.

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_grpo.py[:8b]

DAPO is this config with clip_eps_high=0.28, beta=0, aggregation="token_mean" (and dynamic sampling, on
by default here).
"""

import ml_collections as mlc

from vlm_jax.configs.posttrain import base


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    c = base.base_config(base.parse_size(arg))
    c.name = "rl_grpo" + ("" if c.size == "tiny" else f"_{c.size}")
    c.description = "RL with GRPO on the synthetic world's verifiable tasks"
    c.loss.name = "grpo"
    c.loss.options = {"clip_eps_low": 0.2, "clip_eps_high": 0.2, "beta": 0.04, "kl_estimator": "k3",
                      "aggregation": "seq_mean_token_mean"}
    return c
