"""Generation: greedy parity with Hugging Face `generate`, compile counts, stop tokens, streaming,
thinking budget (tiny random models, CPU, float32)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.helpers import build, random_params, small_config
from vlm_jax.inference import generate as generate_lib
from vlm_jax.inference.generate import TRACE_COUNTS, generate, left_pad, resolve_sampling
from vlm_jax.inference.sampling import SamplingConfig
from vlm_jax.inference.thinking import ThinkingBudget
from vlm_jax.model import rope

NEW = 32

# (prompt seed, one layout per row); all prompts fit the 32-token bucket, so batch-1 cases share the
# decode step. Seeds are picked so that both random models give varied (not near-constant) outputs.
CASES = {
    "text": (0, [[("text", 13)]]),
    "image": (0, [[("text", 4), ("image", (1, 4, 6)), ("text", 5)]]),
    "video": (3, [[("text", 3), ("video", (2, 4, 4)), ("text", 4)]]),
    "batch": (0, [[("text", 3), ("image", (1, 4, 4)), ("text", 6)],
                  [("text", 2), ("image", (1, 2, 6)), ("text", 2)]]),
}


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "moe"])
def models(request, oracle):
    c = small_config(moe=request.param)
    hf = oracle.hf_model(c)
    return c, hf, oracle.params_from(hf, c)


def make_batch(c, layouts, seed=0):
    """Unpadded prompts, our combined (grid, pixels), and HF's left-padded tensors."""
    rng = np.random.default_rng(seed)
    rows = [build(rng, layout, c) for layout in layouts]
    prompts = [r[0] for r in rows]
    cat = lambda xs: ((np.concatenate([g for g, _ in xs]), np.concatenate([p for _, p in xs])) if xs
                      else (None, None))
    ours = cat([r[1] for r in rows if r[1][0] is not None])
    images = cat([r[2] for r in rows if r[2][0] is not None])
    videos = cat([r[3] for r in rows if r[3][0] is not None])
    s = max(len(p) for p in prompts)
    ids, mask = left_pad(prompts, s, 0)
    return prompts, ours, images, videos, ids.astype(np.int64), mask.astype(np.int64)


def hf_generate(oracle, hf, c, ids, mask, images, videos, new=NEW):
    torch = oracle.torch
    t = lambda a, dt=torch.long: None if a is None else torch.as_tensor(np.asarray(a), dtype=dt)
    types = rope.token_types(ids, c.image_token_id, c.video_token_id)
    kw = dict(pixel_values=t(images[1], torch.float32), image_grid_thw=t(images[0]),
              pixel_values_videos=t(videos[1], torch.float32), video_grid_thw=t(videos[0]))
    kw = {k: v for k, v in kw.items() if v is not None}
    if kw:
        kw["mm_token_type_ids"] = t(types, torch.int32)
    with torch.no_grad():
        out = hf.generate(input_ids=t(ids), attention_mask=t(mask), do_sample=False, max_new_tokens=new,
                          eos_token_id=None, pad_token_id=0, **kw)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parity
@pytest.mark.parametrize("case", list(CASES))
def test_greedy_matches_reference(oracle, models, case):
    c, hf, params = models
    prompts, (grid, px), images, videos, ids, mask = make_batch(c, CASES[case][1], CASES[case][0])
    ref = hf_generate(oracle, hf, c, ids, mask, images, videos)
    out = generate(c, params, prompts, pixel_values=px, grid_thw=grid, preset="greedy", max_new_tokens=NEW)
    assert out.tokens.shape == ref.shape == (len(prompts), NEW)
    for row in ref:
        assert len(set(row.tolist())) >= 4, f"reference output is near-constant: {row.tolist()}"
    np.testing.assert_array_equal(out.tokens, ref, err_msg=f"{case}: greedy tokens differ from HF generate")
    assert (out.lengths == NEW).all() and not out.finished.any()


@pytest.fixture(scope="module")
def dense():
    c = small_config()
    return c, random_params(c, seed=1)


def test_decode_compiles_once(dense):
    """The host loop runs 32 jitted steps; two prompts in the same bucket reuse prefill and step.
    (pad_token_id is a static argument: a value no other test uses keeps this test's compile cache
    entries its own, so the counts are exact.)"""
    c, params = dense
    rng = np.random.default_rng(0)
    before = dict(TRACE_COUNTS)
    seen = []
    for n in (10, 12):
        prompt = rng.integers(20, 400, size=n)
        out = generate(c, params, [prompt], max_new_tokens=NEW, use_while_loop=False, pad_token_id=7,
                       callback=lambda step, tok: seen.append((step, tok.copy())))
        assert out.prompt_bucket == 16 and out.lengths[0] == NEW
    for n in (9, 14):  # the all-in-jit while_loop path: also one compile for both prompts
        generate(c, params, [rng.integers(20, 400, size=n)], max_new_tokens=NEW, use_while_loop=True,
                 pad_token_id=7)
    delta = {k: TRACE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "decode_step", "decode_loop")}
    assert delta == {"prefill": 1, "decode_step": 1, "decode_loop": 1}, delta
    # The callback saw every token of both runs, in order.
    assert [s for s, _ in seen] == list(range(NEW)) * 2
    np.testing.assert_array_equal(np.stack([t for _, t in seen[NEW:]])[:, 0], out.tokens[0])


def test_host_loop_and_while_loop_agree_when_sampling(dense):
    """Same key -> same sampled tokens on both decode paths (key for token n is fold_in(key, n))."""
    c, params = dense
    rng = np.random.default_rng(1)
    prompts = [rng.integers(20, 400, size=n) for n in (5, 9)]
    kw = dict(preset="instruct", max_new_tokens=20, rng=3, repetition_penalty=1.1)
    a = generate(c, params, prompts, use_while_loop=True, **kw)
    b = generate(c, params, prompts, use_while_loop=False, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    other = generate(c, params, prompts, use_while_loop=True, **dict(kw, rng=4))
    assert not np.array_equal(a.tokens, other.tokens)


def test_stop_tokens_and_padding(dense):
    c, params = dense
    rng = np.random.default_rng(2)
    prompts = [rng.integers(20, 400, size=n) for n in (7, 11)]
    free = generate(c, params, prompts, max_new_tokens=16)
    # Stop row 0 at the first occurrence of its 5th token; pick it so row 1 is affected differently.
    stop = int(free.tokens[0, 4])
    out = generate(c, params, prompts, max_new_tokens=16, stop_tokens=[stop], pad_token_id=1)
    for r in range(2):
        hits = np.nonzero(free.tokens[r] == stop)[0]
        n = hits[0] + 1 if hits.size else 16
        assert out.lengths[r] == n and out.finished[r] == bool(hits.size)
        np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
        assert (out.tokens[r, n:] == 1).all()
        assert out.sequences()[r] == free.tokens[r, :n].tolist()


def test_all_rows_stopping_ends_early(dense):
    c, params = dense
    prompt = np.random.default_rng(3).integers(20, 400, size=6)
    free = generate(c, params, [prompt], max_new_tokens=8)
    for loop in (True, False):
        out = generate(c, params, [prompt], max_new_tokens=8, stop_tokens=[int(free.tokens[0, 0])],
                       use_while_loop=loop)
        assert out.lengths.tolist() == [1] and out.finished.all() and (out.tokens[0, 1:] == 0).all()


def test_thinking_budget_forces_end_of_think(dense):
    c, params = dense
    start, end, nl = 401, 402, 403
    rng = np.random.default_rng(4)
    prompt = np.concatenate([rng.integers(20, 400, size=6), [start, nl]])  # ends inside <think>\n
    budget = ThinkingBudget(budget=5, end_tokens=(nl, end, nl, nl), end_id=end, start_id=start)
    free = generate(c, params, [prompt], max_new_tokens=16)
    out = generate(c, params, [prompt], max_new_tokens=16, thinking_budget=budget)
    toks = out.tokens[0].tolist()
    if end in free.tokens[0, :5].tolist():
        pytest.skip("the random model closed its think block by itself within the budget")
    assert toks[:5] == free.tokens[0, :5].tolist()
    assert toks[5:9] == [nl, end, nl, nl]
    # A prompt that is not inside a think block is never forced.
    plain = generate(c, params, [prompt[:-2]], max_new_tokens=16, thinking_budget=budget)
    ref = generate(c, params, [prompt[:-2]], max_new_tokens=16)
    np.testing.assert_array_equal(plain.tokens, ref.tokens)


def test_attention_mask_input_and_errors(dense):
    c, params = dense
    rng = np.random.default_rng(5)
    prompts = [rng.integers(20, 400, size=n) for n in (4, 8)]
    ids, mask = left_pad(prompts, 8, 0)
    a = generate(c, params, ids, attention_mask=mask, max_new_tokens=4)
    b = generate(c, params, prompts, max_new_tokens=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    with pytest.raises(ValueError, match="preset 'fast'; choose from instruct, thinking, greedy"):
        generate(c, params, prompts, preset="fast")
    with pytest.raises(ValueError, match="placeholder"):
        generate(c, params, [[1, 2, c.image_token_id]])
    assert isinstance(resolve_sampling("thinking", top_k=5), SamplingConfig)


def test_cache_growth_matches_one_big_cache(dense):
    """Starting with 8 new-token slots and doubling gives the same tokens as one cache sized for
    max_new_tokens, on both decode paths, with sampling state (penalty token sets) carried over."""
    c, params = dense
    rng = np.random.default_rng(6)
    prompts = [rng.integers(20, 400, size=n) for n in (3, 10)]
    kw = dict(preset="instruct", max_new_tokens=20, rng=0, repetition_penalty=1.1)  # compiles shared
    ref = generate(c, params, prompts, initial_capacity=None, **kw)
    before = TRACE_COUNTS["grow"]
    grown = generate(c, params, prompts, initial_capacity=8, **kw)
    streamed = []
    grown_host = generate(c, params, prompts, initial_capacity=8, callback=lambda s, t: streamed.append(t), **kw)
    assert TRACE_COUNTS["grow"] - before == 2  # 8 -> 16 -> 32, compiled once for both paths
    np.testing.assert_array_equal(grown.tokens, ref.tokens)
    np.testing.assert_array_equal(grown_host.tokens, ref.tokens)
    np.testing.assert_array_equal(np.stack(streamed, 1), ref.tokens)


def test_unrolled_decode_splits_new_params_without_recompiling(dense):
    """RL and on-policy distillation generate with new params after every update: the per-layer split of
    the unrolled decode is traced once for a model's shapes, and new params get new copies."""
    c, params = dense
    prompt = [np.arange(20, 30)]
    kw = dict(max_new_tokens=4, decode_layers="unrolled", pad_token_id=9)
    generate(c, params, prompt, **kw)
    before = TRACE_COUNTS["split_layers"]
    updated = jax.tree.map(lambda x: x * 1.5, params)  # what an optimizer step gives: new arrays, same shapes
    outs = [generate(c, p, prompt, **kw).tokens for p in (updated, params, updated)]
    assert TRACE_COUNTS["split_layers"] == before
    np.testing.assert_array_equal(outs[0], outs[2])
    stacked = nn.unbox(updated)["decoder"]["layers"]
    for i, layer in enumerate(generate_lib._layer_params(nn.unbox(updated), c.text.num_layers)):
        jax.tree.map(lambda got, all_layers, i=i: np.testing.assert_array_equal(got, all_layers[i]), layer, stacked)


def test_decode_layer_loops_agree(dense):
    """The model's nn.scan decode and the unrolled per-layer decode (CPU default) give the same tokens,
    including across a cache growth in each layout."""
    c, params = dense
    rng = np.random.default_rng(6)
    prompts = [rng.integers(20, 400, size=n) for n in (3, 10)]
    kw = dict(preset="instruct", max_new_tokens=20, rng=0, repetition_penalty=1.1)  # as in the growth test
    ref = generate(c, params, prompts, decode_layers="unrolled", **kw)
    for cap in (None, 8):
        out = generate(c, params, prompts, decode_layers="scan", initial_capacity=cap, **kw)
        np.testing.assert_array_equal(out.tokens, ref.tokens, err_msg=f"scan, initial_capacity={cap}")
    with pytest.raises(ValueError, match="decode_layers"):
        generate(c, params, prompts, decode_layers="fast")
