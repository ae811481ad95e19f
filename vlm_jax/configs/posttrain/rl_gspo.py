"""RL with GSPO: PPO-clip on the length-normalised sequence ratio, eps 3e-4 / 4e-4 (paper v2), no KL,
each rollout batch split into 4 minibatches.

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_gspo.py[:8b]
"""

import ml_collections as mlc

from vlm_jax.configs.posttrain import base


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    c = base.base_config(base.parse_size(arg))
    c.name = "rl_gspo" + ("" if c.size == "tiny" else f"_{c.size}")
    c.description = "RL with GSPO on the synthetic world's verifiable tasks"
    c.loss.name = "gspo"
    c.loss.options = {"clip_eps_low": 3e-4, "clip_eps_high": 4e-4, "beta": 0.0, "aggregation": "seq_mean_token_mean"}
    c.minibatches = 4
    c.train.num_train_steps = base.num_updates(c)
    return c
