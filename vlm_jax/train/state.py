"""The train state: everything a resumed run needs besides the data iterator's state."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from jax.sharding import Mesh

from vlm_jax.model.vlm import init_params
from vlm_jax.parallel import rules as rules_lib
from vlm_jax.train.optimizer import build_optimizer


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps attempted (skipped ones included, so it counts batches consumed);
    params / opt_state: plain pytrees; rng: raw uint32[2] key (checkpointable as an array);
    skipped_steps: total steps skipped by the non-finite guard; consecutive_skips: current run
    of skipped steps (the loop aborts when it reaches `guard.max_consecutive_skips`)."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray
    skipped_steps: jnp.ndarray
    consecutive_skips: jnp.ndarray


def _new_state(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict, rng: jax.Array,
               tx: optax.GradientTransformation) -> TrainState:
    """Boxed state (params carry nn.Partitioned boxes; the optimizer moments inherit them)."""
    init_rng, state_rng = jax.random.split(rng)
    params = init_params(model_config, init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_rng, skipped_steps=jnp.zeros((), jnp.int32),
                      consecutive_skips=jnp.zeros((), jnp.int32))


def abstract_state(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict):
    """Boxed TrainState of ShapeDtypeStructs (nothing allocated)."""
    tx = build_optimizer(train_config, model_config)
    return jax.eval_shape(lambda: _new_state(model_config, train_config, jax.random.PRNGKey(0), tx))


def state_shardings(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict, mesh: Mesh,
                    rules: rules_lib.Rules = rules_lib.RULES) -> TrainState:
    """NamedShardings of the (unboxed) TrainState: params and moments by the rules, scalars replicated."""
    return rules_lib.param_shardings(abstract_state(model_config, train_config), mesh, rules)


def unboxed_abstract_state(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict, mesh: Mesh,
                           rules: rules_lib.Rules = rules_lib.RULES) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
    boxed = abstract_state(model_config, train_config)
    shardings = rules_lib.param_shardings(boxed, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unbox(boxed), shardings)


def init_train_state(model_config: mlc.ConfigDict, train_config: mlc.ConfigDict, mesh: Mesh,
                     rng: jax.Array | None = None, rules: rules_lib.Rules = rules_lib.RULES,
                     compiler_options: dict[str, Any] | None = None) -> TrainState:
    """A fresh state created directly in its sharded layout (no full copy on any one device).

    `rng` defaults to PRNGKey(train_config.seed); it must be a raw uint32[2] key."""
    rng = jax.random.PRNGKey(train_config.seed) if rng is None else rng
    tx = build_optimizer(train_config, model_config)
    shardings = state_shardings(model_config, train_config, mesh, rules)
    init = jax.jit(lambda r: unbox(_new_state(model_config, train_config, r, tx)), out_shardings=shardings,
                   compiler_options=compiler_options)
    return init(rng)


def unbox(tree):
    """Strips nn.Partitioned boxes (without flax's unbox-time sharding constraints: the
    out_shardings of the surrounding jit already place every leaf)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


def train_state_from_params(params: Any, model_config: mlc.ConfigDict, train_config: mlc.ConfigDict, mesh: Mesh,
                            rng: jax.Array | None = None, rules: rules_lib.Rules = rules_lib.RULES,
                            compiler_options: dict[str, Any] | None = None) -> TrainState:
    """A fresh TrainState (step 0, new optimizer state) around existing params, e.g. converted
    Hugging Face weights or another run's params; they are placed in the rules' layout."""
    rng = jax.random.PRNGKey(train_config.seed) if rng is None else rng
    tx = build_optimizer(train_config, model_config)
    shardings = state_shardings(model_config, train_config, mesh, rules)
    params = jax.device_put(unbox(params), shardings.params)

    def make(p, r):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=r,
                          skipped_steps=jnp.zeros((), jnp.int32), consecutive_skips=jnp.zeros((), jnp.int32))

    # Params are copied (not donated): the caller may keep using its tree.
    return jax.jit(make, out_shardings=shardings, compiler_options=compiler_options)(params, rng)
