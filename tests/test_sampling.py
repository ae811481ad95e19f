"""Sampling processors against Hugging Face's logits processors (and vLLM's penalty semantics),
presets, thinking-output parsing, length buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.inference import kv_cache, sampling, thinking

B, V = 4, 300


@pytest.fixture(scope="module")
def lp():
    """Hugging Face's logits processors, the reference; the comparisons skip without torch / transformers."""
    pytest.importorskip("torch")
    return pytest.importorskip("transformers.generation.logits_process")


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(B, V)) * 3).astype(np.float32)


@pytest.fixture
def history():
    """Token histories [B, 12] (prompt + generated) with repeats, the way HF sees `input_ids`."""
    return np.random.default_rng(1).integers(0, V, size=(B, 12))


def hf_apply(proc, logits, input_ids=None):
    import torch

    ids = torch.zeros((B, 1), dtype=torch.long) if input_ids is None else torch.as_tensor(input_ids)
    return proc(ids, torch.as_tensor(logits)).numpy()


def assert_same(ours, ref):
    ours = np.asarray(ours)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = ~np.isneginf(ref)
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 1.8])
def test_temperature(lp, logits, t):
    ref = hf_apply(lp.TemperatureLogitsWarper(t), logits)
    assert_same(sampling.apply_temperature(jnp.asarray(logits), t), ref)


@pytest.mark.parametrize("k", [1, 5, 20, V])
def test_top_k(lp, logits, k):
    assert_same(sampling.apply_top_k(jnp.asarray(logits), k), hf_apply(lp.TopKLogitsWarper(k), logits))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.8, 0.95, 1.0])
def test_top_p(lp, logits, p):
    assert_same(sampling.apply_top_p(jnp.asarray(logits), p), hf_apply(lp.TopPLogitsWarper(p), logits))


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
def test_min_p(lp, logits, p):
    assert_same(sampling.apply_min_p(jnp.asarray(logits), p), hf_apply(lp.MinPLogitsWarper(p), logits))


@pytest.mark.parametrize("penalty", [0.8, 1.3, 2.0])
def test_repetition_penalty(lp, logits, history, penalty):
    seen = sampling.token_set(jnp.asarray(history), V)
    ref = hf_apply(lp.RepetitionPenaltyLogitsProcessor(penalty), logits, history)
    assert_same(sampling.apply_repetition_penalty(jnp.asarray(logits), seen, penalty), ref)


def test_presence_penalty_is_vllm_semantics(logits, history):
    """vLLM: logits -= penalty * (token count in the generated output > 0); the prompt is not counted."""
    generated = history[:, 6:]
    mask = np.zeros((B, V), bool)
    for r in range(B):
        mask[r, generated[r]] = True
    gen_set = sampling.token_set(jnp.asarray(generated), V)
    ours = sampling.apply_presence_penalty(jnp.asarray(logits), gen_set, 1.5)
    np.testing.assert_allclose(np.asarray(ours), logits - 1.5 * mask, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", ["instruct", "thinking"])
def test_process_logits_matches_hf_chain(lp, logits, history, preset):
    """Penalties -> temperature -> top-k -> top-p (-> min-p), as HF orders its processors; our top-k
    path runs top-p on the k candidates only."""
    cfg = sampling.get_preset(preset, repetition_penalty=1.2, presence_penalty=0.0, min_p=0.05)
    procs = [lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(cfg.temperature),
             lp.TopKLogitsWarper(cfg.top_k), lp.TopPLogitsWarper(cfg.top_p), lp.MinPLogitsWarper(0.05)]
    ref = logits
    for p in procs:
        ref = hf_apply(p, ref, history)
    seen = sampling.token_set(jnp.asarray(history), V)
    ours = sampling.process_logits(jnp.asarray(logits), cfg, prompt_seen=seen, generated=jnp.zeros_like(seen))
    assert_same(ours, ref)


def test_fast_top_k_top_p_equals_full_sort(logits):
    for k, p in [(20, 0.8), (5, 0.3), (50, 0.99), (1, 0.5)]:
        full = sampling.apply_top_p(sampling.apply_top_k(jnp.asarray(logits), k), p)
        assert_same(sampling.apply_top_k_then_top_p(jnp.asarray(logits), k, p), np.asarray(full))


def test_sample_greedy_and_support(logits):
    key = jax.random.key(0)
    greedy = sampling.sample(key, jnp.asarray(logits), sampling.PRESETS["greedy"])
    np.testing.assert_array_equal(np.asarray(greedy), logits.argmax(-1))
    cfg = sampling.SamplingConfig(temperature=1.0, top_k=3)
    keys = jax.random.split(jax.random.key(0), 200)
    draws = np.asarray(jax.vmap(lambda k: sampling.sample(k, jnp.asarray(logits), cfg))(keys))
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    for r in range(B):
        assert set(draws[:, r].tolist()) <= set(top3[r].tolist())
        # The most likely token is drawn most often (probabilities here are far apart enough).
        probs = np.exp(logits[r, top3[r]] - logits[r, top3[r]].max())
        if probs[0] / probs.sum() > 0.5:
            assert np.bincount(draws[:, r]).argmax() == top3[r, 0]


def test_sample_frequencies_follow_probabilities():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    cfg = sampling.SamplingConfig(temperature=1.0, top_p=0.9)  # drops the 0.05 token
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sampling.sample(k, logits, cfg))(keys))[:, 0]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.03)


def test_presets():
    p = sampling.PRESETS
    fields = lambda x: (x.temperature, x.top_p, x.top_k, x.presence_penalty, x.max_new_tokens)
    assert fields(p["instruct"]) == (0.7, 0.8, 20, 1.5, 32768)
    assert fields(p["thinking"]) == (1.0, 0.95, 20, 0.0, 40960)
    assert all(x.repetition_penalty == 1.0 for x in p.values())
    assert p["greedy"].greedy
    assert sampling.get_preset("instruct", top_k=5, top_p=None).top_k == 5
    with pytest.raises(ValueError, match="choose from instruct, thinking, greedy"):
        sampling.get_preset("beam")
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingConfig(top_p=0.0)


def test_split_thinking():
    s = thinking.split_thinking
    assert s("<think>\nlet me see\n</think>\n\nThe answer is 4.") == ("let me see", "The answer is 4.")
    assert s("reasoning only after template\n</think>\n\n42") == ("reasoning only after template", "42")
    assert s("a </think> b </think> c") == ("a </think> b", "c")  # the LAST </think> counts
    assert s("no tags at all") == ("", "no tags at all")
    assert thinking.answer_text("x</think>") == ""
    assert thinking.split_thinking_tokens([1, 2, 9, 3, 9, 4], 9) == ([1, 2, 9, 3, 9], [4])
    assert thinking.split_thinking_tokens([1, 2], 9) == ([], [1, 2])


def test_thinking_budget_config():
    b = thinking.ThinkingBudget(budget=4, end_tokens=[5, 9], end_id=9, start_id=8)
    assert b.end_tokens == (5, 9) and hash(b)
    assert b.prompt_in_think([1, 8, 2]) and not b.prompt_in_think([8, 2, 9, 3]) and not b.prompt_in_think([1])
    with pytest.raises(ValueError, match="must contain end_id"):
        thinking.ThinkingBudget(budget=4, end_tokens=(5,), end_id=9)


def test_bucket_length():
    assert [kv_cache.bucket_length(n) for n in (1, 16, 17, 100, 1024, 1025, 3000)] == \
        [16, 16, 32, 128, 1024, 2048, 3072]
    with pytest.raises(ValueError):
        kv_cache.bucket_length(0)
