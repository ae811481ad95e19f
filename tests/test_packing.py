"""Packing of tokenised samples into CONTRACTS.md batches (no tokenizer / processor needed)."""

from __future__ import annotations

import json
import math

import grain
import numpy as np
import pytest

from vlm_jax.data import packing
from vlm_jax.data.packing import STATS_KEY, PackIterDataset


def fake_sample(index: int, length: int, n_patches: int = 0, n_grids: int = 0, task_id: int = 1) -> dict:
    """A tokenised sample whose token ids / pixels encode its index, to trace it through packing."""
    ids = (np.arange(length, dtype=np.int32) + 1000 * (index + 1)) % 100_000 + 1
    mask = np.zeros(length, bool)
    mask[length // 2 :] = True  # second half is the "answer"
    pos = np.stack([np.arange(length), np.arange(length) + 1, np.arange(length) + 2]).astype(np.int32)
    grids = np.zeros((n_grids, 3), np.int32)
    if n_grids:
        per = n_patches // n_grids
        grids[:] = (1, 2, per // 2)
        assert grids[:, 1:].prod(-1).sum() == n_patches
    return {
        "input_ids": ids,
        "loss_mask": mask,
        "position_ids": pos,
        "pixel_values": np.full((n_patches, 8), index + 1, np.float32),
        "grid_thw": grids,
        "task_id": task_id,
        "index": index,
    }


def cfg(**kw) -> packing.PackingConfig:
    base = dict(seq_len=64, batch_size=4, max_patches=32, max_grids=8, patch_dim=8)
    base.update(kw)
    return packing.get_config(**base)


def random_stream(n: int, seed: int = 0, max_len: int = 40, vision_every: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(4, max_len))
        if i % vision_every == 0:
            out.append(fake_sample(i, length, n_patches=4, n_grids=1))
        else:
            out.append(fake_sample(i, length))
    return out


def unpack(batch: dict) -> list[tuple[int, int, np.ndarray]]:
    """(row, segment, input_ids) of every packed sample, in flattened order."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][r]
        for k in range(1, int(seg.max()) + 1):
            out.append((r, k, batch["input_ids"][r][seg == k]))
    return out


def test_target_weights_three_normalisations():
    mask = np.array([0, 0, 1, 1, 1, 1], bool)  # 4 supervised tokens -> 4 supervised positions (1..4)
    tok = packing.target_weights(mask, "token")
    np.testing.assert_array_equal(tok, [0, 1, 1, 1, 1, 0])
    np.testing.assert_allclose(packing.target_weights(mask, "sample"), tok / 4)
    np.testing.assert_allclose(packing.target_weights(mask, "sqrt"), tok / 2)
    assert packing.target_weights(np.zeros(5, bool), "sample").sum() == 0
    with pytest.raises(ValueError, match="normalisation"):
        packing.target_weights(mask, "bogus")


def test_config_validation():
    with pytest.raises(ValueError, match="loss_normalization"):
        cfg(loss_normalization="mean")
    with pytest.raises(ValueError, match=r"packing\.seq_len must be positive"):
        cfg(seq_len=0)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) packing\.seq_length;"):
        cfg(seq_length=8)
    assert cfg().max_consecutive_skips == packing.base_config().max_consecutive_skips


def test_batch_matches_contract_and_keeps_samples_whole():
    c = cfg(loss_normalization="sqrt")
    stream = random_stream(60)
    batches = list(packing.pack_samples(stream, c))
    seen = []
    for batch in batches:
        stats = batch.pop(STATS_KEY)
        b, s = c.batch_size, c.seq_len
        expect = {
            "input_ids": ((b, s), np.int32),
            "segment_ids": ((b, s), np.int32),
            "position_ids": ((3, b, s), np.int32),
            "targets": ((b, s), np.int32),
            "loss_weights": ((b, s), np.float32),
            "task_ids": ((b, s), np.int32),
            "pixel_values": ((c.max_patches, c.patch_dim), np.float32),
            "grid_thw": ((c.max_grids, 3), np.int32),
        }
        assert set(batch) == set(expect)
        for k, (shape, dtype) in expect.items():
            assert batch[k].shape == shape and batch[k].dtype == dtype, k
        pad = batch["segment_ids"] == 0
        assert (batch["loss_weights"][pad] == 0).all() and (batch["targets"][pad] == 0).all()
        assert (batch["position_ids"][:, pad] == 0).all() and (batch["task_ids"][pad] == 0).all()
        # Vision buffer: samples' patches in placeholder order over the flattened grid.
        vision_order = []
        for r, k, ids in unpack(batch):
            idx = int((ids[0] - 1) // 1000) - 1
            smp = stream[idx]
            np.testing.assert_array_equal(ids, smp["input_ids"])  # whole, never truncated
            seg = batch["segment_ids"][r] == k
            np.testing.assert_array_equal(batch["position_ids"][:, r][:, seg], smp["position_ids"])
            np.testing.assert_array_equal(batch["targets"][r][seg], np.append(smp["input_ids"][1:], 0))
            w = batch["loss_weights"][r][seg]
            n = smp["loss_mask"][1:].sum()
            np.testing.assert_allclose(w[w > 0], 1 / math.sqrt(n), rtol=1e-6)
            assert (w > 0).sum() == n and w[-1] == 0
            if len(smp["pixel_values"]):
                vision_order.append(idx + 1)
            seen.append(idx)
        p = batch["pixel_values"][:, 0]
        real = p[p != 0]
        np.testing.assert_array_equal(real, np.repeat(vision_order, 4))  # contiguous, in order
        assert (p[len(real) :] == 0).all()
        assert int((batch["grid_thw"][:, 0] > 0).sum()) == len(vision_order)
        assert stats["samples"] == len(unpack(batch))
    assert sorted(seen) == list(range(60))  # every sample exactly once


def test_too_long_and_too_many_patches_are_skipped_and_counted():
    c = cfg()
    stream = [
        fake_sample(0, 10),
        fake_sample(1, 65),
        fake_sample(2, 64),
        fake_sample(3, 5, n_patches=34, n_grids=1),
    ]
    stream.append(fake_sample(4, 5, n_patches=18, n_grids=9))  # 9 images > max_grids 8
    stream.append(packing.skip_marker("bad_image", "sample 5: corrupt"))
    batches = list(packing.pack_samples(stream, c))
    skipped: dict[str, int] = {}
    packed = []
    for b in batches:
        for k, v in b[STATS_KEY]["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        packed += [int((ids[0] - 1) // 1000) - 1 for _, _, ids in unpack(b)]
    assert skipped == {"too_long": 1, "too_many_patches": 1, "too_many_visuals": 1, "bad_image": 1}
    assert sorted(packed) == [0, 2]  # a sample of exactly seq_len fits


def test_vision_buffer_is_shared_by_the_batch():
    # 8 samples of 10 patches each; 32 patches per batch -> at most 3 such samples per batch.
    c = cfg(max_patches=32)
    stream = [fake_sample(i, 6, n_patches=10, n_grids=1) for i in range(8)]
    batches = list(packing.pack_samples(stream, c))
    assert [b[STATS_KEY]["samples"] for b in batches] == [3, 3, 2]
    assert all(b[STATS_KEY]["patches"] <= 32 for b in batches)


def test_oldest_sample_is_placed_first():
    c = cfg(seq_len=16, batch_size=1, buffer_factor=4.0)
    stream = [fake_sample(0, 15)] + [fake_sample(i, 4) for i in range(1, 20)]
    first = next(iter(packing.pack_samples(stream, c)))
    assert [int((ids[0] - 1) // 1000) - 1 for _, _, ids in unpack(first)] == [0]


def test_packing_efficiency_on_a_realistic_length_mix():
    rng = np.random.default_rng(1)
    c = cfg(seq_len=2048, batch_size=8, max_patches=1 << 16, max_grids=256)
    lengths = np.clip(rng.lognormal(5.5, 0.8, size=3000), 20, 2048).astype(int)
    stream = [fake_sample(i, int(n)) for i, n in enumerate(lengths)]
    batches = list(packing.pack_samples(stream, c))[:-2]  # the tail batches drain the pool
    eff = np.mean([packing.packing_efficiency(b) for b in batches])
    print("packing efficiency", eff)
    assert eff >= 0.95, eff


class _Stream(grain.MapDataset):
    """A MapDataset of fake samples with a few skip markers."""

    def __init__(self, n: int):
        super().__init__()
        self._items = random_stream(n, seed=3)
        for i in range(5, n, 17):
            self._items[i] = packing.skip_marker("bad_image", f"sample {i}", i)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._items[index % len(self._items)]


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            if k == STATS_KEY:
                assert x[k] == y[k]
            else:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("normalisation", ["token", "sample"])
def test_pack_iter_dataset_checkpoint_resumes_exactly(normalisation):
    c = cfg(loss_normalization=normalisation)
    ds = PackIterDataset(_Stream(300).to_iter_dataset(), c)
    it = iter(ds)
    full = [next(it) for _ in range(6)]
    it = iter(ds)
    first = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))  # survives JSON (grain checkpoints)
    assert state["pending"], "the pool should carry samples over between batches"
    it2 = iter(ds)
    it2.set_state(state)
    rest = [next(it2) for _ in range(3)]
    _assert_batches_equal(full, first + rest)


def test_pack_iter_dataset_finite_stream_drains():
    c = cfg()
    stream = _Stream(100)
    batches = list(PackIterDataset(stream.to_iter_dataset(), c))
    total = sum(b[STATS_KEY]["samples"] for b in batches)
    skipped = sum(sum(b[STATS_KEY]["skipped"].values()) for b in batches)
    assert total + skipped == 100


def test_stream_of_only_skips_fails_loudly():
    """A source where every sample is bad stops with the cause instead of spinning forever."""
    import grain

    from vlm_jax.data.packing import PackIterDataset

    bad = grain.MapDataset.source([{"skipped": "processing_error", "message": f"sample {i}: boom"}
                                   for i in range(50)]).to_iter_dataset()
    ds = PackIterDataset(bad, packing.get_config(seq_len=16, batch_size=1, max_consecutive_skips=10))
    with pytest.raises(RuntimeError, match=r"10 consecutive samples were skipped; last: processing_error: sample 9"):
        next(iter(ds))
