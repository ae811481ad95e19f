"""RL with SAPO (Qwen3-VL's RL loss): soft sigmoid gate, tau_pos = 1.0, tau_neg = 1.05, no KL,
sequence-mean of token means (verl and TRL force it for SAPO).

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_sapo.py[:8b]
"""

import ml_collections as mlc

from vlm_jax.configs.posttrain import base


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    c = base.base_config(base.parse_size(arg))
    c.name = "rl_sapo" + ("" if c.size == "tiny" else f"_{c.size}")
    c.description = "RL with SAPO on the synthetic world's verifiable tasks"
    c.loss.name = "sapo"
    c.loss.options = {"tau_pos": 1.0, "tau_neg": 1.05, "beta": 0.0, "aggregation": "seq_mean_token_mean"}
    return c
