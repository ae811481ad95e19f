"""Group advantages, pass-rate filtering and DAPO dynamic sampling against hand computations."""

import numpy as np
import pytest

from vlm_jax.posttrain import advantages as adv


@pytest.mark.parametrize("ddof", [0, 1])
def test_group_advantages_match_numpy(ddof):
    rewards = np.random.default_rng(0).normal(size=(3, 8))
    got = np.asarray(adv.group_advantages(rewards, eps=1e-4, ddof=ddof))
    mean = rewards.mean(1, keepdims=True)
    std = np.sqrt(((rewards - mean) ** 2).sum(1, keepdims=True) / (8 - ddof))
    np.testing.assert_allclose(got, (rewards - mean) / (std + 1e-4), rtol=1e-5, atol=1e-6)
    assert got.shape == (3, 8)


def test_group_advantages_without_std_is_dr_grpo():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    got = np.asarray(adv.group_advantages(rewards, scale_std=False))
    np.testing.assert_allclose(got, [[0.75, -0.25, -0.25, -0.25], [-3.0, -1.0, 1.0, 3.0]], rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_zero_variance_group_gives_zero_advantage(eps):
    # 0.1 is not exact in binary: the group mean differs from 0.1 by rounding, which a tiny std would blow up.
    rewards = np.array([[0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    for scale_std in (True, False):
        got = np.asarray(adv.group_advantages(rewards, scale_std=scale_std, eps=eps))
        assert np.isfinite(got).all()
        assert (got[:2] == 0).all()
        assert (got[2] != 0).all()


def test_group_advantages_bad_shapes():
    with pytest.raises(ValueError, match=r"\[num_prompts, G\]"):
        adv.group_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="ddof=1"):
        adv.group_advantages(np.zeros((4, 1)))
    assert (np.asarray(adv.group_advantages(np.ones((4, 1)), ddof=0)) == 0).all()


def _correct(counts, g=10):
    """[len(counts), g] 0/1 rows with counts[i] ones."""
    return (np.arange(g)[None, :] < np.asarray(counts)[:, None]).astype(np.int32)


def test_pass_rate_filter_drops_easy_and_all_wrong():
    correct = _correct([0, 1, 5, 9, 10])
    np.testing.assert_allclose(adv.pass_rates(correct), [0.0, 0.1, 0.5, 0.9, 1.0])
    # > 0.9 dropped, exactly 0.9 kept; all wrong dropped.
    assert adv.pass_rate_filter(correct).tolist() == [False, True, True, True, False]
    assert adv.pass_rate_filter(correct, max_pass_rate=0.5).tolist() == [False, True, True, False, False]
    assert adv.pass_rate_filter(correct, min_pass_rate=0.1).tolist() == [False, False, True, True, False]
    assert adv.pass_rate_filter(correct, max_pass_rate=1.0, min_pass_rate=-1.0).all()
    assert adv.pass_rate_filter(correct.astype(bool)).tolist() == [False, True, True, True, False]


def test_pass_rate_filter_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        adv.pass_rates(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="min_pass_rate"):
        adv.pass_rate_filter(_correct([1]), max_pass_rate=0.2, min_pass_rate=0.2)


def test_signal_groups():
    rewards = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0], [0.5, 0.2, 0.2], [1, 0, 1]], float)
    assert adv.has_signal(rewards).tolist() == [False, True, False, True, True]
    assert adv.select_signal_groups(rewards).tolist() == [1, 3, 4]
    assert adv.select_signal_groups(rewards, limit=2).tolist() == [1, 3]


def test_dynamic_sampling_refills_lazily():
    batches = [
        np.array([[1, 1], [0, 1], [0, 0]]),  # 1 with signal
        np.array([[1, 0], [0, 0], [0, 1]]),  # 2
        np.array([[0, 0], [1, 0], [0, 1]]),  # 2, only 1 needed
        np.array([[1, 0], [1, 0], [1, 0]]),  # must never be generated
    ]
    generated = []

    def generate():
        for b in batches:
            generated.append(b)
            yield b

    kept = adv.dynamic_sampling(generate(), target_groups=4)
    assert [k.tolist() for k in kept] == [[1], [0, 2], [1]]
    assert len(generated) == 3


def test_dynamic_sampling_gives_up():
    flat = np.ones((3, 4))
    with pytest.raises(RuntimeError, match="kept 0 of 2"):
        adv.dynamic_sampling(iter([flat] * 20), target_groups=2, max_batches=5)
    with pytest.raises(RuntimeError, match="kept 1 of 2"):
        adv.dynamic_sampling(iter([np.array([[0, 1]])]), target_groups=2, max_batches=0)
    with pytest.raises(ValueError, match="target_groups"):
        adv.dynamic_sampling(iter([flat]), target_groups=0)
