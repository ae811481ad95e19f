"""Flax linen modules of the Qwen3-VL family: pure functions of (params, inputs)."""
