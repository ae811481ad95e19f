"""Random packed batches in the CONTRACTS.md format, for the trainer's tests.

Rows hold 1-3 samples; a sample is random text, optionally with one image
(`<|vision_start|>`, t*h*w/4 `<|image_pad|>`, `<|vision_end|>`) whose patches go into the
shared vision buffer. Position ids come from `get_rope_index` per sample, so the batch is a
faithful stand-in for the pipeline's output (no tokenizer or images needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc
import numpy as np

from vlm_jax.model.rope import get_rope_index

_FIRST_TEXT_ID = 32  # keep random text clear of the special-token ids


def _rng(rng: np.random.Generator | int | Sequence[int]) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def make_fake_batch(
    config: mlc.ConfigDict,
    batch: int,
    seq_len: int,
    num_patches: int,
    rng: np.random.Generator | int | Sequence[int] = 0,
    *,
    num_grids: int = 8,
    num_tasks: int = 2,
    loss_normalization: str = "token",
    image_prob: float = 0.7,
) -> dict[str, np.ndarray]:
    """A packed batch: input_ids/segment_ids/targets/loss_weights/task_ids [B, S], position_ids
    [3, B, S], pixel_values [num_patches, patch_dim], grid_thw [num_grids, 3].

    Loss weights cover the text targets in the second half of each sample ("the answer"), in the
    given normalisation mode ('token' | 'sample' | 'sqrt', see vlm_jax.data.packing)."""
    g = _rng(rng)
    v = config.vision
    m = v.spatial_merge_size
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    vocab = config.text.vocab_size
    out = {
        "input_ids": np.zeros((batch, seq_len), np.int32),
        "segment_ids": np.zeros((batch, seq_len), np.int32),
        "position_ids": np.zeros((3, batch, seq_len), np.int32),
        "targets": np.zeros((batch, seq_len), np.int32),
        "loss_weights": np.zeros((batch, seq_len), np.float32),
        "task_ids": np.zeros((batch, seq_len), np.int32),
        "pixel_values": np.zeros((num_patches, patch_dim), np.float32),
        "grid_thw": np.zeros((num_grids, 3), np.int32),
    }
    p_used = g_used = 0
    for r in range(batch):
        t = 0
        for seg in range(1, g.integers(1, 4) + 1):
            room = seq_len - t
            if room < 6:
                break
            n = int(g.integers(6, max(7, min(room, seq_len // 2) + 1)))
            ids = g.integers(_FIRST_TEXT_ID, vocab, size=n).astype(np.int32)
            grid = None
            hb, wb = int(g.integers(1, 3)), int(g.integers(1, 3))
            if g.random() < image_prob and g_used < num_grids and p_used + hb * wb * m * m <= num_patches \
                    and n >= hb * wb + 4:
                grid = np.asarray([1, hb * m, wb * m], np.int32)
                k = hb * wb
                start = int(g.integers(0, n - k - 2 + 1))
                ids[start] = config.vision_start_token_id
                ids[start + 1:start + 1 + k] = config.image_token_id
                ids[start + 1 + k] = config.vision_end_token_id
                npatch = int(np.prod(grid))
                out["pixel_values"][p_used:p_used + npatch] = g.standard_normal((npatch, patch_dim)).astype(np.float32)
                out["grid_thw"][g_used] = grid
                p_used, g_used = p_used + npatch, g_used + 1
            pos, _ = get_rope_index(ids[None], None if grid is None else grid[None], None,
                                    image_token_id=config.image_token_id, video_token_id=config.video_token_id,
                                    spatial_merge_size=m)
            sl = slice(t, t + n)
            out["input_ids"][r, sl] = ids
            out["segment_ids"][r, sl] = seg
            out["position_ids"][:, r, sl] = pos[:, 0]
            out["targets"][r, t:t + n - 1] = ids[1:]
            special = np.isin(ids[1:], [config.image_token_id, config.video_token_id,
                                        config.vision_start_token_id, config.vision_end_token_id])
            w = np.zeros(n, np.float32)
            w[:-1] = (~special) & (np.arange(n - 1) >= n // 2)
            cnt = w.sum()
            if cnt and loss_normalization == "sample":
                w /= cnt
            elif cnt and loss_normalization == "sqrt":
                w /= np.sqrt(cnt)
            out["loss_weights"][r, sl] = w
            out["task_ids"][r, sl] = int(g.integers(1, num_tasks + 1)) if num_tasks else 0
            t += n
    return out


def merge_process_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The single-process equivalent of per-process batches: rows concatenated, and the real
    patches / grid rows of all processes packed at the front of buffers of the summed size."""
    out = {k: np.concatenate([b[k] for b in batches], axis=1 if k == "position_ids" else 0)
           for k in ("input_ids", "segment_ids", "position_ids", "targets", "loss_weights", "task_ids")}
    pv = np.zeros((sum(len(b["pixel_values"]) for b in batches), batches[0]["pixel_values"].shape[1]), np.float32)
    grid = np.zeros((sum(len(b["grid_thw"]) for b in batches), 3), np.int32)
    p = g = 0
    for b in batches:
        rows = b["grid_thw"][b["grid_thw"].prod(-1) > 0]
        n = int(rows.prod(-1).sum())
        pv[p:p + n] = b["pixel_values"][:n]
        grid[g:g + len(rows)] = rows
        p, g = p + n, g + len(rows)
    out["pixel_values"], out["grid_thw"] = pv, grid
    return out


class FakeDataIterator:
    """Endless deterministic fake batches with pipeline-style `get_state` / `set_state`.

    Batch i is a function of (seed, i, process_index) only, so restoring the state replays
    exactly the batches that would have followed."""

    def __init__(self, config: mlc.ConfigDict, batch: int, seq_len: int, num_patches: int, *, seed: int = 0,
                 process_index: int = 0, **kwargs: Any):
        self.config, self.batch, self.seq_len, self.num_patches = config, batch, seq_len, num_patches
        self.seed, self.process_index, self.kwargs = seed, process_index, kwargs
        self.index = 0

    def __iter__(self) -> FakeDataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = make_fake_batch(self.config, self.batch, self.seq_len, self.num_patches,
                            [self.seed, self.index, self.process_index], **self.kwargs)
        self.index += 1
        return b

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data state is for seed {state['seed']}, this iterator has seed {self.seed}")
        self.index = int(state["index"])


def fake_params(config: mlc.ConfigDict, seed: int = 0) -> dict:
    """Host (numpy) params shaped like `init_params(config, ...)` without compiling anything:
    norm scales 1, biases 0, everything else N(0, 0.02) as the model's default initialiser.
    For tests that need *some* params fast; not the model's exact random stream."""
    import flax.linen as nn
    import jax

    from vlm_jax.model.vlm import param_shapes

    g = np.random.default_rng(seed)

    def one(path, leaf):
        shape, dtype = leaf.value.shape, leaf.value.dtype
        name = str(getattr(path[-1], "key", ""))
        if name == "scale":
            return np.ones(shape, dtype)
        if name == "bias":
            return np.zeros(shape, dtype)
        return (0.02 * g.standard_normal(shape)).astype(dtype)

    return jax.tree_util.tree_map_with_path(one, param_shapes(config), is_leaf=lambda x: isinstance(x, nn.Partitioned))
