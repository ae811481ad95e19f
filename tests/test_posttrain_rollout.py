"""RL rollouts: the sampler's log-probs equal the training forward's on the same tokens, every copy of a
prompt keeps all its images, `return_logprobs` leaves the tokens alone, completions are never truncated
(tiny model, random params, CPU, float32)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from tests.helpers import LAYOUTS, build, random_params
from vlm_jax.configs.model import get_config
from vlm_jax.inference.generate import generate
from vlm_jax.inference.prompt import Prompt, batch_prompts
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.posttrain.rollout import rollout, to_train_batch, token_logprobs
from vlm_jax.train.step import BATCH_KEYS

C = get_config("tiny")
G = 3  # completions per prompt
NEW = 12
SEQ = 64
TOL = 1e-5  # max |sampler log-prob - recomputed log-prob| (float32)

# Each decode path once: (while_loop, layer loop). initial_capacity=4 makes the cache grow 4 -> 8 -> 16.
RUNS = {1.0: dict(use_while_loop=True, decode_layers="unrolled"), 0.7: dict(use_while_loop=False, decode_layers="scan")}


@pytest.fixture(scope="module")
def params():
    return random_params(C, seed=0)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    out = []
    for layout in (LAYOUTS["one_image"], LAYOUTS["two_images"]):
        ids, (grid, px), _, _ = build(rng, layout, C)
        out.append(Prompt(ids.tolist(), px.astype(np.float32), grid.astype(np.int32)))
    return out


@pytest.fixture(scope="module")
def sampled(params, prompts):
    """temperature -> (rollouts, train batch), each decoded on another path, with a cache growth."""
    out = {}
    for temp, kw in RUNS.items():
        r = rollout(C, params, prompts, group_size=G, max_new_tokens=NEW, sampling=SamplingConfig(temperature=temp),
                    rng=1, initial_capacity=4, **kw)
        out[temp] = r, to_train_batch(r, SEQ, C)
    return out


@pytest.mark.parametrize("temp", list(RUNS))
def test_sampler_logprobs_match_training_forward(params, prompts, sampled, temp):
    r, batch = sampled[temp]
    assert len(r) == G * len(prompts) and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(len(c) == NEW for c in r.completions) and not r.finished.any()
    # Sampling at temperature > 0 gives different completions within a group.
    assert len({tuple(c) for c in r.completions}) == len(r)
    recomputed = np.asarray(token_logprobs(C, params, batch, temperature=temp))
    w = batch["loss_weights"]
    assert set(BATCH_KEYS) | {"old_logp"} <= set(batch) and w.sum() == G * len(prompts) * NEW
    for i in range(len(r)):
        n_prompt = len(prompts[r.prompt_index[i]])
        sl = slice(n_prompt - 1, n_prompt - 1 + NEW)  # positions whose targets are the completion
        np.testing.assert_array_equal(batch["targets"][i, sl], r.completions[i])
        assert (w[i, sl] == 1).all() and w[i].sum() == NEW
        np.testing.assert_array_equal(batch["old_logp"][i, sl], r.logprobs[i])
    assert (batch["old_logp"][w == 0] == 0).all()
    diff = np.abs(recomputed - batch["old_logp"])[w > 0]
    print(f"temperature {temp}: max |sampler - recomputed| log-prob = {diff.max():.3g}")
    assert diff.max() < TOL, diff.max()
    # The check has teeth: another temperature gives other log-probs.
    other = np.asarray(token_logprobs(C, params, batch, temperature=temp + 0.5))
    assert np.abs(other - batch["old_logp"])[w > 0].max() > 100 * TOL


def test_every_copy_keeps_all_images(prompts, sampled):
    r, batch = sampled[1.0]
    grids = batch["grid_thw"][batch["grid_thw"][:, 0] > 0]
    want_grids = np.concatenate([p.grid_thw for p in prompts for _ in range(G)])
    np.testing.assert_array_equal(grids, want_grids)  # 3 x 1 + 3 x 2 images, in row order
    n = sum(p.num_patches for p in prompts) * G
    want_px = np.concatenate([p.pixel_values for p in prompts for _ in range(G)])
    np.testing.assert_array_equal(batch["pixel_values"][:n], want_px)
    assert not batch["pixel_values"][n:].any()
    for i in range(len(r)):
        n_img = (batch["input_ids"][i] == C.image_token_id).sum()
        assert n_img == r.grid_thw[i].prod(-1).sum() // 4 and len(r.grid_thw[i]) == (1, 2)[r.prompt_index[i]]


def test_position_ids_continue_the_prompt(prompts, sampled):
    """Completion positions in the train batch are the decode positions: max(prompt) + 1 + n."""
    r, batch = sampled[1.0]
    for i in range(len(r)):
        n_prompt = len(prompts[r.prompt_index[i]])
        pos = batch["position_ids"][:, i]
        start = pos[:, :n_prompt].max() + 1
        want = np.broadcast_to(start + np.arange(NEW), (3, NEW))
        np.testing.assert_array_equal(pos[:, n_prompt:n_prompt + NEW], want)
        assert batch["segment_ids"][i].sum() == n_prompt + NEW and not pos[:, n_prompt + NEW:].any()


def test_greedy_logprobs_are_log_softmax_at_argmax(params, prompts):
    """Greedy rollouts report log_softmax at temperature 1 of the argmax, checked on a teacher-forced forward."""
    r = rollout(C, params, prompts, group_size=1, max_new_tokens=NEW, sampling="greedy", initial_capacity=4)
    assert r.temperature == 1.0
    tb = to_train_batch(r, SEQ, C)
    args = [tb[k] for k in ("input_ids", "position_ids", "segment_ids", "pixel_values", "grid_thw")]
    forward = jax.jit(lambda p, *a: jax.nn.log_softmax(Qwen3VL(C).apply({"params": p}, *a)["logits"]))
    logp = np.asarray(forward(params, *args))
    for i, p in enumerate(prompts):
        sl = slice(len(p) - 1, len(p) - 1 + NEW)
        np.testing.assert_array_equal(logp[i, sl].argmax(-1), r.completions[i])
        np.testing.assert_allclose(r.logprobs[i], logp[i, sl].max(-1), rtol=0, atol=TOL)
        assert (r.logprobs[i] < 0).all()


@pytest.mark.slow  # 15 s on 2 cores; `pytest -m slow` runs it
def test_sampled_tokens_unchanged_and_logprobs_zero_after_stop(params, prompts, sampled):
    """Same seed with and without log-probs -> same tokens; a stop token ends the log-probs too."""
    r, _ = sampled[1.0]
    rows = [p for p in prompts for _ in range(G)]
    kw = dict(preset=SamplingConfig(temperature=1.0), max_new_tokens=NEW, rng=1, initial_capacity=4, **RUNS[1.0])
    plain = generate(C, params, **batch_prompts(rows), **kw)
    np.testing.assert_array_equal(plain.tokens, np.stack(r.completions))
    stop = int(plain.tokens[0, 4])
    out = generate(C, params, **batch_prompts(rows), stop_tokens=[stop], return_logprobs=True, **kw)
    for i in range(len(rows)):
        n = int(out.lengths[i])
        assert out.finished[i] == (stop in plain.tokens[i].tolist()) and (out.finished[i] or n == NEW)
        np.testing.assert_array_equal(out.tokens[i, :n], plain.tokens[i, :n])
        np.testing.assert_allclose(out.logprobs[i, :n], r.logprobs[i][:n], rtol=0, atol=TOL)
        assert (out.logprobs[i, n:] == 0).all()
    assert out.finished[0] and out.lengths[0] <= 5


def test_bad_rows_raise(sampled, prompts):
    r, _ = sampled[1.0]
    longest = max(len(p) for p in prompts) + NEW
    with pytest.raises(ValueError, match=rf"rollout row 3: prompt \({len(prompts[1])} tokens\) \+ completion "
                                         rf"\({NEW} tokens\)"):
        to_train_batch(r, longest - 1, C)
    to_train_batch(r, longest, C)  # fits exactly
    # A generated visual placeholder cannot be replayed by the training forward.
    bad = dataclasses.replace(r, completions=[*r.completions[:2], [C.image_token_id] * NEW, *r.completions[3:]])
    with pytest.raises(ValueError, match=rf"rollout row 2: .* visual placeholder ids \[{C.image_token_id}\]"):
        to_train_batch(bad, SEQ, C)
