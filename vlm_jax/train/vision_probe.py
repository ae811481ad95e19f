"""Is the model reading its images? Measures of the visual pathway on a packed batch.

A vision-language model can drive its loss down on answer formats and label priors while
ignoring the pixels. These measures tell that apart, on a fixed probe batch:

  answer_accuracy   per-sample teacher-forced exact match of the supervised tokens
  swap_images       the same batch with each image replaced by another sample's image
  pixel_influence   how much the answers depend on their own images: the drop in answer
                    log-probability when images are swapped, and the gradient norm of the
                    answer loss with respect to the pixels

`pixel_influence` is logged by the train loop (`vision/...` metrics) so that a collapse of the
visual pathway shows in the curves when it happens, not only in the final scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from vlm_jax.model.vlm import Qwen3VL
from vlm_jax.train import losses


def sample_ids(segment_ids: np.ndarray) -> np.ndarray:
    """A global id per (row, segment) of a packed [B, S] batch (-1 for padding)."""
    seg = np.asarray(segment_ids)
    row = np.arange(seg.shape[0])[:, None] * (int(seg.max(initial=0)) + 1)
    return np.where(seg > 0, row + seg, -1)


def answer_accuracy(logits: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[int, bool]:
    """{sample id: every supervised token is the argmax} for the samples with supervised tokens."""
    pred = np.asarray(logits).argmax(-1)
    ok = pred == np.asarray(batch["targets"])
    supervised = np.asarray(batch["loss_weights"]) > 0
    ids = sample_ids(batch["segment_ids"])
    out: dict[int, bool] = {}
    for sid in np.unique(ids[supervised]):
        m = supervised & (ids == sid)
        out[int(sid)] = bool(ok[m].all())
    return out


def swap_images(batch: Mapping[str, np.ndarray], shift: int = 1) -> dict[str, np.ndarray]:
    """The batch with each image's patches replaced by those of the `shift`-th next image of the
    same grid (a vision-off control that keeps pixel statistics, token layout and grids).

    Only single-frame entries take part; videos and images whose grid no other image shares
    keep their own pixels. Raises if no image can be swapped."""
    grid = np.asarray(batch["grid_thw"]).reshape(-1, 3)
    px = np.asarray(batch["pixel_values"])
    counts = grid.prod(-1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    new = px.copy()
    swapped = 0
    for g in {tuple(r) for r in grid[(grid[:, 0] == 1)]}:
        members = np.nonzero((grid == np.asarray(g)).all(-1))[0]
        if len(members) < 2:
            continue
        n = int(np.prod(g))
        for i, j in zip(members, np.roll(members, -shift)):
            new[starts[i]:starts[i] + n] = px[starts[j]:starts[j] + n]
        swapped += len(members)
    if not swapped:
        raise ValueError("swap_images: no two images in the batch share a grid; nothing to swap")
    return {**batch, "pixel_values": new}


def _forward(model: Qwen3VL, params: Any, batch: Mapping[str, Any], pixel_values: Any) -> dict:
    return model.apply({"params": params}, batch["input_ids"], batch["position_ids"], batch["segment_ids"],
                       pixel_values, batch["grid_thw"])


def make_answer_logprob_fn(model_config: mlc.ConfigDict):
    """jitted (params, batch) -> (per-position log p(target) [B, S], logits)."""
    model = Qwen3VL(model_config)

    def fn(params, batch):
        out = _forward(model, params, batch, batch["pixel_values"])
        ce, _ = losses.token_cross_entropy(out["logits"], batch["targets"])
        return -ce, out["logits"]

    return jax.jit(fn)


def make_pixel_grad_fn(model_config: mlc.ConfigDict):
    """jitted (params, batch) -> gradient of the weighted answer loss with respect to pixel_values."""
    model = Qwen3VL(model_config)

    def loss(pixel_values, params, batch):
        out = _forward(model, params, batch, pixel_values)
        return losses.weighted_sums(out["logits"], batch["targets"], batch["loss_weights"])["ce_sum"]

    return jax.jit(lambda params, batch: jax.grad(loss)(batch["pixel_values"], params, batch))


def per_image_norms(pixel_grads: np.ndarray, grid_thw: np.ndarray) -> np.ndarray:
    """L2 norm of the pixel gradient of each real grid entry."""
    grid = np.asarray(grid_thw).reshape(-1, 3)
    counts = grid.prod(-1)
    ends = np.cumsum(counts)
    g = np.asarray(pixel_grads)
    return np.asarray([np.linalg.norm(g[e - n:e]) for n, e in zip(counts, ends) if n > 0])


class PixelInfluence:
    """Answer dependence on the pixels for fixed probe batches; call with params -> metrics (the mean
    over the batches of each batch's measures). The jitted functions are shared by all batches."""

    def __init__(self, model_config: mlc.ConfigDict, probe_batches: Sequence[Mapping[str, np.ndarray]]):
        self.batches = [{k: np.asarray(v) for k, v in b.items()} for b in probe_batches]
        if not self.batches:
            raise ValueError("PixelInfluence needs at least one probe batch")
        self.swapped = [swap_images(b) for b in self.batches]
        self.logprob = make_answer_logprob_fn(model_config)
        self.pixel_grad = make_pixel_grad_fn(model_config)

    def _measure(self, params: Any, batch: Mapping[str, np.ndarray], swapped: Mapping[str, np.ndarray]
                 ) -> dict[str, float]:
        lp, logits = jax.device_get(self.logprob(params, batch))
        lp_swap, logits_swap = jax.device_get(self.logprob(params, swapped))
        acc = answer_accuracy(logits, batch)
        acc_swap = answer_accuracy(logits_swap, swapped)
        norms = per_image_norms(jax.device_get(self.pixel_grad(params, batch)), batch["grid_thw"])
        s = batch["loss_weights"] > 0
        return {
            "vision/answer_logprob": float(lp[s].mean()),
            "vision/logprob_drop_on_swap": float(lp[s].mean() - lp_swap[s].mean()),
            "vision/answer_acc": float(np.mean(list(acc.values()))),
            "vision/answer_acc_swapped": float(np.mean(list(acc_swap.values()))),
            "vision/pixel_grad_norm": float(np.median(norms)) if norms.size else 0.0,
        }

    def __call__(self, params: Any) -> dict[str, float]:
        rows = [self._measure(params, b, sw) for b, sw in zip(self.batches, self.swapped)]
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
