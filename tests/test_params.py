"""Parameter counts from shapes match the published Qwen3-VL totals within 2%."""

import pytest

from vlm_jax.configs import model as model_configs
from vlm_jax.params import count as params


@pytest.mark.parametrize("size", sorted(model_configs.PUBLISHED_TOTAL_B))
def test_published_totals(size):
    n = params.count_params(model_configs.get_config(size))
    published = model_configs.PUBLISHED_TOTAL_B[size] * 1e9
    assert abs(n["total"] / published - 1) < 0.02, f"{size}: {n['total'] / 1e9:.3f}B vs {published / 1e9}B"
    t = model_configs.get_config(size).text
    if t.num_experts:
        # "A3B" / "A22B": the active LLM is 3B / 22B; the tower (~0.5B) comes on top.
        active_llm = (n["active"] - n["vision"]) / 1e9
        assert abs(active_llm - {"30b-a3b": 3.3, "235b-a22b": 22.2}[size]) < 0.35, active_llm
    else:
        assert n["active"] == n["total"]


def test_unknown_size_and_key_fail():
    with pytest.raises(ValueError, match="unknown model size"):
        model_configs.get_config("7b")
    c = model_configs.base_config()
    c.text.bogus = 1
    with pytest.raises(ValueError, match=r"unknown config key\(s\) model\.text\.bogus;"):
        model_configs.validate(c)
    c = model_configs.base_config()
    c.text.mrope_section = (24, 20, 21)
    with pytest.raises(ValueError, match="mrope_section"):
        model_configs.validate(c)
