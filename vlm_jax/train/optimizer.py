"""AdamW with per-module learning rates, freezing, a weight-decay mask, global-norm clipping,
warmup + cosine/linear schedules and ViT layer-wise lr decay.

Module groups (by the top-level param name):
  vision  "vision/*"                                   (lr `optimizer.vision_lr`)
  merger  "merger/*", "deepstack_mergers_*"            (lr `optimizer.merger_lr`)
  llm     "embed", "decoder/*", "lm_head"              (lr `optimizer.llm_lr`)
A param of a frozen group gets the label "frozen": `optax.set_to_zero()`, so it carries no
optimizer state at all (the train step also stops its gradient, so its backward pass is never
computed). Each trained group is its own AdamW inside one `optax.multi_transform`, so Adam
state exists exactly once per trainable param. Weight decay skips norms, biases and embeddings
unless configured (a path-based mask inside each group's AdamW).

Chain:  zero frozen grads -> clip by global norm (over trainable grads) -> multi_transform of
per-label AdamW (scale_by_adam, add_decayed_weights, scale_by_learning_rate(schedule)) ->
ViT layer-wise scale. Layer decay is applied last, to the final update: it scales the update
(lr times Adam direction plus decay), which is the same as scaling that layer's lr. Scanned
ViT blocks hold all layers of a segment in one array (`vision/blocks_{start}_{end}/...`, axis
0 = layer start..end-1), so the scale is an array along axis 0, built from the param's path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

GROUPS = ("vision", "merger", "llm")
FROZEN = "frozen"
_BLOCKS = re.compile(r"^vision/blocks_(\d+)_(\d+)/")


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def path_name(path) -> str:
    """'a/b/c' for a tree path (dict keys; flax box attributes are skipped)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def module_group(name: str) -> str:
    """Group of a param path ('vision', 'merger' or 'llm'); fails for an unknown module."""
    top = name.split("/", 1)[0]
    if top == "vision":
        return "vision"
    if top == "merger" or top.startswith("deepstack_mergers"):
        return "merger"
    if top in ("embed", "decoder", "lm_head"):
        return "llm"
    raise ValueError(f"param {name!r} belongs to no optimizer group (vision / merger / llm); "
                     "add its top-level module to vlm_jax.train.optimizer.module_group")


def is_frozen(group: str, opt: mlc.ConfigDict) -> bool:
    return bool(opt[f"freeze_{group}"])


def decays(name: str, opt: mlc.ConfigDict) -> bool:
    """Whether weight decay applies to the param at `name`."""
    parts = name.split("/")
    leaf, modules = parts[-1], parts[:-1]
    if leaf in ("scale", "bias") and any("norm" in m or m.startswith("ln_") for m in modules):
        return bool(opt.decay_norms)
    if leaf == "bias":
        return bool(opt.decay_biases)
    if name == "embed" or leaf in ("pos_embed", "queries"):
        return bool(opt.decay_embeddings)
    return True


def param_label(name: str, opt: mlc.ConfigDict) -> str:
    group = module_group(name)
    return FROZEN if is_frozen(group, opt) else group


def decay_mask(params, train_config: mlc.ConfigDict):
    """Tree of bools: True where weight decay applies. Works on trees holding optax.MaskedNode
    (what a group's transform sees inside multi_transform): those have no leaves, so they pass
    through unchanged and the mask keeps the tree's structure."""
    opt = train_config.optimizer
    return jax.tree_util.tree_map_with_path(lambda p, _: decays(path_name(p), opt), params, is_leaf=_is_box)


def param_labels(params, train_config: mlc.ConfigDict):
    """Tree of labels (a prefix of `params`; works for boxed and unboxed params)."""
    opt = train_config.optimizer
    return jax.tree_util.tree_map_with_path(lambda p, _: param_label(path_name(p), opt), params, is_leaf=_is_box)


def trainable_mask(params, train_config: mlc.ConfigDict):
    """Tree of bools: True where the param is trained."""
    return jax.tree.map(lambda label: label != FROZEN, param_labels(params, train_config))


def lr_schedule(peak: float, train_config: mlc.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then cosine / linear decay to `peak * min_lr_ratio` at
    `decay_steps` (0 = num_train_steps), or constant."""
    o = train_config.optimizer
    total = o.decay_steps or train_config.num_train_steps
    end = peak * o.min_lr_ratio
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, o.warmup_steps, total, end_value=end)
    warm = optax.linear_schedule(0.0, peak, max(o.warmup_steps, 1))
    if o.schedule == "linear":
        after = optax.linear_schedule(peak, end, max(total - o.warmup_steps, 1))
    else:
        after = optax.constant_schedule(peak)
    if o.warmup_steps == 0:
        return after
    return optax.join_schedules([warm, after], [o.warmup_steps])


def lr_schedules(train_config: mlc.ConfigDict) -> dict[str, optax.Schedule]:
    """Schedule per module group (frozen groups included: their lr is reported, not used)."""
    o = train_config.optimizer
    return {g: lr_schedule(o[f"{g}_lr"], train_config) for g in GROUPS}


def layer_scale(name: str, shape: tuple[int, ...], depth: int, decay: float) -> np.ndarray | float:
    """Layer-wise lr scale of a param (BEiT): ViT block i -> decay^(depth - i), patch and position
    embeddings -> decay^(depth + 1), everything else 1. Scanned blocks get a [L, 1, ...] array."""
    if decay == 1.0 or not name.startswith("vision/"):
        return 1.0
    m = _BLOCKS.match(name)
    if m:
        start, end = int(m.group(1)), int(m.group(2))
        if shape[0] != end - start:
            raise ValueError(f"{name}: expected {end - start} stacked layers on axis 0, got shape {shape}")
        s = decay ** (depth - np.arange(start, end, dtype=np.float64))
        return s.astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
    if name.split("/")[1] in ("patch_embed", "pos_embed"):
        return float(decay ** (depth + 1))
    return 1.0


def scale_by_layer_decay(depth: int, decay: float) -> optax.GradientTransformation:
    """Stateless: multiplies each vision update by its `layer_scale`."""

    def update_fn(updates, state, params=None):
        del params
        if decay == 1.0:
            return updates, state
        scaled = jax.tree_util.tree_map_with_path(
            lambda p, u: u * jnp.asarray(layer_scale(path_name(p), u.shape, depth, decay), u.dtype), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _adamw(train_config: mlc.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    o = train_config.optimizer
    parts = [optax.scale_by_adam(o.b1, o.b2, o.eps, mu_dtype=jnp.dtype(o.mu_dtype))]
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=lambda p: decay_mask(p, train_config)))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def build_optimizer(train_config: mlc.ConfigDict, model_config: mlc.ConfigDict) -> optax.GradientTransformation:
    """The full optimizer (see the module docstring). Init it with the params (boxed params give
    a boxed state, from which `vlm_jax.parallel.param_shardings` reads the state's shardings)."""
    o = train_config.optimizer
    schedules = lr_schedules(train_config)
    transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for g in GROUPS:
        transforms[g] = _adamw(train_config, schedules[g])
    labels: Callable = lambda params: param_labels(params, train_config)
    frozen: Callable = lambda params: jax.tree.map(lambda lab: lab == FROZEN, labels(params))
    chain = [optax.masked(optax.set_to_zero(), frozen)]
    if o.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
    chain.append(optax.multi_transform(transforms, labels))
    chain.append(scale_by_layer_decay(model_config.vision.depth, float(o.vision_layer_decay)))
    return optax.chain(*chain)


def state_size(opt_state) -> int:
    """Number of array elements in an optimizer state (for checking frozen params hold none)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(opt_state)))
