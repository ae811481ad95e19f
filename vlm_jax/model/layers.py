"""Small building blocks shared by the vision tower and the decoder."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def dtype_of(name: str) -> Dtype:
    return jnp.dtype(name)


def param_init(init: nn.initializers.Initializer, names: Sequence[str | None]):
    """An initializer whose param carries logical axis names for the sharding rules."""
    return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jnp.ndarray, names: Sequence[str | None]) -> jnp.ndarray:
    """Logical sharding constraint on an activation (a no-op outside a rules context)."""
    return nn.with_logical_constraint(x, tuple(names))


DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


class Dense(nn.Module):
    """y = x W (+ b) with a logically named kernel [in, out]."""

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_scale: float = 1.0  # kernel init std is 0.02 * init_scale (0: zeros)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        init = nn.initializers.normal(0.02 * self.init_scale) if self.init_scale else nn.initializers.zeros
        kernel = self.param("kernel", param_init(init, self.axes), (x.shape[-1], self.features), self.param_dtype)
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", param_init(nn.initializers.zeros, self.axes[1:]), (self.features,),
                              self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """Qwen RMSNorm: normalise in float32, cast back, then scale."""

    eps: float = 1e-6
    axis_name: str = "norm"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", param_init(nn.initializers.ones, (self.axis_name,)), (x.shape[-1],),
                           self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics and logically named scale/bias."""

    eps: float = 1e-6
    axis_name: str = "norm"
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = x.shape[-1]
        scale = self.param("scale", param_init(nn.initializers.ones, (self.axis_name,)), (d,), self.param_dtype)
        bias = self.param("bias", param_init(nn.initializers.zeros, (self.axis_name,)), (d,), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def gelu_tanh(x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.gelu(x, approximate=True)


def gelu_exact(x: jnp.ndarray) -> jnp.ndarray:
    return jax.nn.gelu(x, approximate=False)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(module_cls, policy: str, static_argnums: tuple[int, ...] = ()):
    """Wraps a layer class in nn.remat with the named checkpoint policy ("none": no remat)."""
    if policy == "none":
        return module_cls
    return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=False, static_argnums=static_argnums)
