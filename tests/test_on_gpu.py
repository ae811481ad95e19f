"""The GPU kernels compiled for a real GPU (not Pallas interpret mode), against the plain-jnp oracle
(`tests/attention_oracle.py`): the Triton flash kernel (`gpu`) and cuDNN (`cudnn`), values and gradients
with packing, padding, GQA and causal masks, and the model's logits with `gpu` and `xla_chunked` against
`xla`; the MoE layer's ragged grouped matmul against its dense reference. Run on a GPU machine only; CPU CI
runs the same kernels in interpret mode (`test_attention_impls.py`).

    JAX_PLATFORMS=cuda python -m pytest tests/test_on_gpu.py -q

(conftest.py puts JAX on the CPU unless JAX_PLATFORMS says otherwise.) Tolerances: the oracle and `xla` run
full-precision float32 matmuls (conftest.py sets the "highest" matmul precision); the Triton
kernel's dots may use TF32 (10 mantissa bits), so its float32 errors are ~1e-3 of the values, not 1e-6.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.attention_oracle import attention_inputs, model_inputs, oracle, packed_segments
from tests.helpers import random_params, small_config
from vlm_jax.kernels import attention as attn
from vlm_jax.kernels.gpu_attention import gpu_attention
from vlm_jax.model.vlm import Qwen3VL

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiles GPU kernels: needs a GPU")

TRITON_ATOL = 1e-2  # TF32 dots inside the kernel (see above)
BF16_ATOL = 5e-2


def _errors(fn, q, k, v, w, mask):
    """Max abs error of fn's values and of its q/k/v gradients against the oracle's."""
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * w)
    ref = lambda q, k, v: oracle(q, k, v, mask)
    out, want = jax.jit(fn)(q, k, v), jax.jit(ref)(q, k, v)
    grads = [jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(q, k, v) for f in (fn, ref)]
    errs = [float(jnp.max(jnp.abs(out.astype(jnp.float32) - want)))]
    errs += [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) for a, b in zip(*grads)]
    print(f"max abs errors (out, dq, dk, dv): {errs}; value scale {float(jnp.max(jnp.abs(want))):.3f}")
    return errs


@pytest.mark.parametrize("causal", [True, False])
def test_triton_kernel_compiled_matches_oracle(causal):
    b, t, h, kh, d = 2, 300, 4, 2, 64  # not a block multiple; GQA; packed with padding
    q, k, v, w = attention_inputs(b, t, t, h, kh, d, seed=4)
    seg = packed_segments(b, t)
    mask = attn.attention_mask(seg, None, causal=causal, t=t, s=t)
    errs = _errors(lambda q, k, v: gpu_attention(q, k, v, segment_ids=seg, causal=causal), q, k, v, w, mask)
    assert max(errs) < TRITON_ATOL


def test_cudnn_bfloat16_matches_oracle():
    b, t, h, kh, d = 2, 256, 4, 2, 64
    q, k, v, w = attention_inputs(b, t, t, h, kh, d, seed=6)
    seg = packed_segments(b, t)
    mask = attn.attention_mask(seg, None, causal=True, t=t, s=t)
    valid = (np.asarray(seg) != 0)[:, :, None, None]  # padding rows differ by contract
    fn = lambda q, k, v: attn.dot_product_attention(
        q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), q_segment_ids=seg, causal=True,
        impl="cudnn").astype(jnp.float32) * valid
    errs = _errors(fn, q, k, v, w * valid, mask)
    assert max(errs) < BF16_ATOL


def _logits(reference, other):
    """The model's logits under two configs of the same shapes, with the same params and a two-sample input."""
    params = random_params(reference)
    ids, pos, seg, grid, px = model_inputs(reference)
    return seg, [jax.jit(lambda p, c=c: Qwen3VL(c).apply({"params": p}, ids, pos, seg, px, grid)["logits"])(params)
                 for c in (reference, other)]


@pytest.mark.parametrize("impl", ["gpu", "xla_chunked"])
def test_model_logits_with_gpu_kernels_equal_xla(impl):
    seg, logits = _logits(small_config(), small_config(attention_impl=impl))
    valid = np.asarray(seg[0]) != 0
    err = float(np.abs(np.asarray(logits[1])[:, valid] - np.asarray(logits[0])[:, valid]).max())
    print(f"{impl}: max abs logit error {err:.2e}, logit scale {float(np.abs(np.asarray(logits[0])).max()):.2f}")
    assert err < (TRITON_ATOL if impl == "gpu" else 1e-4)


def test_ragged_moe_equals_dense_on_gpu():
    _, logits = _logits(small_config(moe=True), small_config(moe=True, **{"text.moe_impl": "ragged"}))
    chex.assert_trees_all_close(logits[1], logits[0], atol=1e-4)
