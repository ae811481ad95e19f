"""Hugging Face Qwen3-VL / Qwen3-VL-MoE checkpoints <-> vlm_jax params.

Reading streams one tensor at a time from the safetensors shards into preallocated host
buffers of our layout (so host memory holds one copy of the model plus one tensor), then
moves each buffer to the device and frees it. Writing does the reverse, shard by shard.

MoE experts: released checkpoints store `gate_up_proj` [E, H, 2I] and `down_proj` [E, I, H];
transformers >= 5 keeps (and saves) [E, 2I, H] and [E, H, I]. Both are read, told apart by
shape (as transformers does: its in-memory layout wins when the shapes are ambiguous).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from vlm_jax.configs import model as model_configs
from vlm_jax.model.vision import vision_segments
from vlm_jax.model.vlm import param_shapes

_V = "model.visual."
_T = "model.language_model."


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf: dict, **overrides) -> mlc.ConfigDict:
    """Our model config from a Hugging Face `config.json` dict; unsupported values raise."""
    mt = hf.get("model_type")
    if mt not in ("qwen3_vl", "qwen3_vl_moe"):
        raise ValueError(f"config.json model_type={mt!r}: only qwen3_vl and qwen3_vl_moe are supported")
    tc, vc = hf.get("text_config", {}), hf.get("vision_config", {})
    rp = dict(tc.get("rope_parameters") or tc.get("rope_scaling") or {})
    rope_type = rp.get("rope_type", rp.get("type", "default"))

    def unsupported(key, value, expected):
        raise ValueError(f"config.json {key}={value!r} is not supported (expected {expected})")

    if rope_type not in ("default", "mrope", "yarn"):
        unsupported("text_config.rope_type", rope_type, "'default' or 'yarn'")
    if tc.get("hidden_act", "silu") != "silu":
        unsupported("text_config.hidden_act", tc.get("hidden_act"), "'silu'")
    if vc.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        unsupported("vision_config.hidden_act", vc.get("hidden_act"), "'gelu_pytorch_tanh'")
    if tc.get("attention_bias", False):
        unsupported("text_config.attention_bias", True, "false")
    if mt == "qwen3_vl_moe":
        if tc.get("mlp_only_layers") or tc.get("decoder_sparse_step", 1) != 1:
            unsupported("text_config.mlp_only_layers/decoder_sparse_step",
                        (tc.get("mlp_only_layers"), tc.get("decoder_sparse_step")), "all layers MoE")
    vrope = vc.get("rope_parameters") or {}
    if vrope.get("rope_type", "axial") != "axial":
        unsupported("vision_config.rope_type", vrope.get("rope_type"), "'axial'")
    if vc.get("out_hidden_size", tc.get("hidden_size")) != tc.get("hidden_size"):
        unsupported("vision_config.out_hidden_size", vc.get("out_hidden_size"), "text hidden_size")

    c = model_configs.base_config()
    c.name = hf.get("_name_or_path") or "qwen3-vl-hf"
    c.vision.update(
        depth=vc["depth"], hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
        num_heads=vc["num_heads"], in_channels=vc.get("in_channels", 3), patch_size=vc.get("patch_size", 16),
        temporal_patch_size=vc.get("temporal_patch_size", 2), spatial_merge_size=vc.get("spatial_merge_size", 2),
        num_position_embeddings=vc.get("num_position_embeddings", 2304),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        deepstack_layers=tuple(vc.get("deepstack_visual_indexes", ())))
    heads = tc["num_attention_heads"]
    c.text.update(
        vocab_size=tc["vocab_size"], hidden_size=tc["hidden_size"], intermediate_size=tc["intermediate_size"],
        num_layers=tc["num_hidden_layers"], num_heads=heads, num_kv_heads=tc.get("num_key_value_heads", heads),
        head_dim=tc.get("head_dim") or tc["hidden_size"] // heads, rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
        rope_theta=float(rp.get("rope_theta", tc.get("rope_theta", 5_000_000.0))),
        mrope_section=tuple(rp.get("mrope_section", (24, 20, 20))),
        mrope_layout="interleaved" if rp.get("mrope_interleaved", True) else "chunked",
        max_position_embeddings=tc.get("max_position_embeddings", 262144),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))))
    if rope_type == "yarn":
        c.text.rope_scaling.update(_yarn_from_hf(rp, tc))
    if mt == "qwen3_vl_moe":
        c.text.update(num_experts=tc.get("num_experts", tc.get("num_local_experts")),
                      num_experts_per_tok=tc["num_experts_per_tok"],
                      moe_intermediate_size=tc["moe_intermediate_size"],
                      norm_topk_prob=bool(tc.get("norm_topk_prob", True)),
                      router_aux_loss_coef=tc.get("router_aux_loss_coef", 0.001))
    c.deepstack = bool(c.vision.deepstack_layers)
    if not c.deepstack:
        c.vision.deepstack_layers = ()
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if k in hf:
            c[k] = hf[k]
    c.update(overrides)
    model_configs.validate(c)
    return c


# Keys of a yarn `rope_parameters` that we read (transformers' `_validate_yarn_rope_parameters`), and the
# MRoPE/theta keys that sit in the same dict.
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor", "truncate")
_ROPE_OTHER_KEYS = ("rope_type", "type", "rope_theta", "mrope_section", "mrope_interleaved")


def _yarn_from_hf(rp: dict, tc: dict) -> dict:
    """`text.rope_scaling` from a yarn `rope_parameters` / `rope_scaling`, with transformers' defaults: the
    training length falls back to `max_position_embeddings` (a top-level `original_max_position_embeddings`
    wins, as transformers' standardisation does), a missing factor is the ratio of the two lengths."""
    extra = sorted(set(rp) - set(_YARN_KEYS) - set(_ROPE_OTHER_KEYS) - {"partial_rotary_factor"})
    if extra:
        raise ValueError(f"config.json text_config.rope_parameters has keys {extra} that yarn rope scaling here "
                         f"does not read (known: {', '.join(_YARN_KEYS)})")
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"config.json text_config.rope_parameters.partial_rotary_factor="
                         f"{rp['partial_rotary_factor']!r} is not supported (expected 1.0)")
    max_len = tc.get("max_position_embeddings", 262144)
    orig = tc.get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") or max_len
    factor = rp.get("factor")
    out = {k: rp[k] for k in _YARN_KEYS if rp.get(k) is not None}
    # transformers reads `beta_fast or 32`: a 0 there means the default
    out.update(rope_type="yarn", original_max_position_embeddings=int(orig),
               factor=float(max_len / orig if factor is None else factor),
               beta_fast=float(rp.get("beta_fast") or 32.0), beta_slow=float(rp.get("beta_slow") or 1.0))
    for k in ("mscale", "mscale_all_dim", "attention_factor"):
        if k in out:
            out[k] = float(out[k])
    return out


def _rope_parameters_to_hf(r: mlc.ConfigDict) -> dict:
    """The rope-scaling keys of an exported `rope_parameters` (none for plain RoPE)."""
    if r.rope_type == "default":
        return dict(rope_type="default")
    return dict(rope_type=r.rope_type, **{k: r[k] for k in _YARN_KEYS if r[k] is not None})


def hf_config_from(c: mlc.ConfigDict) -> dict:
    """A Hugging Face `config.json` dict for our config (what `save_hf_checkpoint` writes)."""
    if c.merger != "mlp":
        raise ValueError(f"merger={c.merger!r} has no Hugging Face counterpart; only 'mlp' exports")
    if c.vision.attention != "full":
        raise ValueError("vision.attention='window' has no Qwen3-VL Hugging Face counterpart")
    if c.merger_center:
        raise ValueError("merger_center=True (visual tokens centred per frame) has no Hugging Face counterpart")
    if c.video_time_encoding != "timestamps":
        # Qwen3-VL's processor writes text timestamps and its get_rope_index has no time-scaled temporal ids:
        # the exported model would read videos in a layout it was not trained on.
        raise ValueError(f"video_time_encoding={c.video_time_encoding!r} (Qwen2.5-VL absolute-time video positions) "
                         "has no Qwen3-VL Hugging Face counterpart; only 'timestamps' exports")
    t, v = c.text, c.vision
    moe = bool(t.num_experts)
    mt = "qwen3_vl_moe" if moe else "qwen3_vl"
    text = dict(
        model_type=f"{mt}_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, hidden_act="silu", rms_norm_eps=t.rms_norm_eps,
        max_position_embeddings=t.max_position_embeddings, attention_bias=False,
        tie_word_embeddings=t.tie_word_embeddings,
        rope_parameters=dict(**_rope_parameters_to_hf(t.rope_scaling), rope_theta=t.rope_theta,
                             mrope_section=list(t.mrope_section), mrope_interleaved=t.mrope_layout == "interleaved"))
    if moe:
        text.update(num_experts=t.num_experts, num_experts_per_tok=t.num_experts_per_tok,
                    moe_intermediate_size=t.moe_intermediate_size, norm_topk_prob=t.norm_topk_prob,
                    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=t.router_aux_loss_coef)
    vision = dict(
        model_type=f"{mt}_vision", depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        num_heads=v.num_heads, in_channels=v.in_channels, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
        out_hidden_size=t.hidden_size, num_position_embeddings=v.num_position_embeddings,
        deepstack_visual_indexes=list(v.deepstack_layers) if c.deepstack else [], hidden_act="gelu_pytorch_tanh",
        rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta))
    arch = "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"
    return dict(architectures=[arch], model_type=mt, text_config=text, vision_config=vision,
                tie_word_embeddings=t.tie_word_embeddings, image_token_id=c.image_token_id,
                video_token_id=c.video_token_id, vision_start_token_id=c.vision_start_token_id,
                vision_end_token_id=c.vision_end_token_id)


# ----------------------------------------------------------------------------- name mapping


def _vision_block_path(c: mlc.ConfigDict, layer: int) -> tuple[str, int]:
    for start, end in vision_segments(c):
        if start <= layer < end:
            return f"vision/blocks_{start}_{end}", layer - start
    raise KeyError(layer)


_LIN = lambda w: w.T  # torch Linear [out, in] -> our kernel [in, out]
_ID = lambda w: w


def _targets(name: str, c: mlc.ConfigDict, shape: tuple[int, ...]) -> list[tuple[str, int | None, object]]:
    """(our param path, layer index within a stack or None, transform) for one HF tensor name."""
    if name == "lm_head.weight":
        return [] if c.text.tie_word_embeddings else [("lm_head", None, _LIN)]
    if name == _T + "embed_tokens.weight":
        return [("embed", None, _ID)]
    if name == _T + "norm.weight":
        return [("decoder/final_norm/scale", None, _ID)]
    if name == _V + "patch_embed.proj.weight":
        return [("vision/patch_embed/kernel", None, lambda w: w.reshape(w.shape[0], -1).T)]
    if name == _V + "patch_embed.proj.bias":
        return [("vision/patch_embed/bias", None, _ID)]
    if name == _V + "pos_embed.weight":
        return [("vision/pos_embed", None, _ID)]
    m = re.fullmatch(
        r"model\.visual\.(merger|deepstack_merger_list\.(\d+))\.(norm|linear_fc1|linear_fc2)\.(weight|bias)", name)
    if m:
        mod = "merger" if m.group(2) is None else f"deepstack_mergers_{m.group(2)}"
        if m.group(2) is not None and (not c.deepstack or int(m.group(2)) >= len(c.vision.deepstack_layers)):
            raise KeyError(name)
        sub = {"norm": "norm", "linear_fc1": "fc1", "linear_fc2": "fc2"}[m.group(3)]
        if sub == "norm":
            return [(f"{mod}/norm/{'scale' if m.group(4) == 'weight' else 'bias'}", None, _ID)]
        return [(f"{mod}/{sub}/{'kernel' if m.group(4) == 'weight' else 'bias'}", None,
                 _LIN if m.group(4) == "weight" else _ID)]
    m = re.fullmatch(r"model\.visual\.blocks\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        stack, i = _vision_block_path(c, int(m.group(1)))
        sub = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn/qkv", "attn.proj": "attn/proj",
               "mlp.linear_fc1": "fc1", "mlp.linear_fc2": "fc2"}.get(m.group(2))
        if sub is None:
            raise KeyError(name)
        if sub.startswith("norm"):
            return [(f"{stack}/{sub}/{'scale' if m.group(3) == 'weight' else 'bias'}", i, _ID)]
        return [(f"{stack}/{sub}/{'kernel' if m.group(3) == 'weight' else 'bias'}", i,
                 _LIN if m.group(3) == "weight" else _ID)]
    m = re.fullmatch(r"model\.language_model\.layers\.(\d+)\.(.+)", name)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i >= c.text.num_layers:
            raise KeyError(name)
        base = "decoder/layers"
        simple = {
            "input_layernorm.weight": ("input_norm/scale", _ID),
            "post_attention_layernorm.weight": ("post_attn_norm/scale", _ID),
            "self_attn.q_norm.weight": ("attn/q_norm/scale", _ID),
            "self_attn.k_norm.weight": ("attn/k_norm/scale", _ID),
        }
        for p in ("q", "k", "v", "o"):
            simple[f"self_attn.{p}_proj.weight"] = (f"attn/{p}_proj/kernel", _LIN)
        if not c.text.num_experts:
            for p in ("gate", "up", "down"):
                simple[f"mlp.{p}_proj.weight"] = (f"mlp/{p}_proj/kernel", _LIN)
        else:
            simple["mlp.gate.weight"] = ("moe/router", _LIN)
        if rest in simple:
            path, fn = simple[rest]
            return [(f"{base}/{path}", i, fn)]
        if c.text.num_experts and rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            d, inter = c.text.hidden_size, c.text.moe_intermediate_size
            if rest.endswith("gate_up_proj"):
                # -> [E, H, 2I]; transformers layout is [E, 2I, H]
                to_ehi = (lambda w: w.transpose(0, 2, 1)) if shape[1:] == (2 * inter, d) else _ID
                return [(f"{base}/moe/wi_gate", i, lambda w: to_ehi(w)[:, :, :inter]),
                        (f"{base}/moe/wi_up", i, lambda w: to_ehi(w)[:, :, inter:])]
            return [(f"{base}/moe/wo", i, (lambda w: w.transpose(0, 2, 1)) if shape[1:] == (d, inter) else _ID)]
    raise KeyError(name)


# ----------------------------------------------------------------------------- reading


def params_from_hf_tensors(tensors: Iterable[tuple[str, np.ndarray]], c: mlc.ConfigDict,
                           dtype: str | None = None) -> dict:
    """Builds our params from (HF name, array) pairs, consumed one at a time."""
    shapes = _flat(nn.unbox(param_shapes(c)))
    pdt = np.dtype(jnp.dtype(dtype or c.param_dtype))
    buffers: dict[str, np.ndarray] = {}
    filled: dict[str, set] = {p: set() for p in shapes}
    unexpected = []
    for name, arr in tensors:
        try:
            targets = _targets(name, c, tuple(arr.shape))
        except KeyError:
            unexpected.append(name)
            continue
        for path, layer, fn in targets:
            want = shapes[path].shape
            value = np.asarray(fn(np.asarray(arr)))
            got_shape = value.shape if layer is None else (want[0], *value.shape)
            if got_shape != want:
                raise ValueError(f"shape mismatch for {name} -> {path}: checkpoint gives {tuple(arr.shape)} "
                                 f"(as {got_shape} in our layout), model config expects {want}")
            buf = buffers.get(path)
            if buf is None:
                buf = buffers[path] = np.empty(want, pdt)
            if layer is None:
                buf[...] = value
            else:
                buf[layer] = value
            filled[path].add(layer)
    if unexpected:
        raise ValueError(f"unexpected tensors in checkpoint (not part of this model config): "
                         f"{', '.join(sorted(unexpected)[:20])}{' ...' if len(unexpected) > 20 else ''}")
    missing = []
    for path, done in filled.items():
        n = shapes[path].shape[0] if _is_stacked(path) else None
        need = set(range(n)) if n is not None else {None}
        if done != need:
            missing.append(path if n is None else f"{path} layers {sorted(need - done)}")
    if missing:
        raise ValueError(f"checkpoint is missing tensors for: {'; '.join(missing)}")
    out = {}
    for path in list(buffers):
        out[path] = jnp.asarray(buffers.pop(path))  # one tensor's worth of duplication at a time
    return _unflat(out)


def _is_stacked(path: str) -> bool:
    return path.startswith("vision/blocks_") or path.startswith("decoder/layers/")


def _safetensor_files(ckpt_dir: Path) -> list[Path]:
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (ckpt_dir / f).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return [ckpt_dir / f for f in files]
    single = ckpt_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {ckpt_dir}")


def iter_hf_tensors(ckpt_dir: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Streams (name, array) from every shard; bfloat16 comes back as ml_dtypes' bfloat16."""
    from safetensors import safe_open

    for f in _safetensor_files(Path(ckpt_dir)):
        with safe_open(str(f), framework="flax") as st:
            for name in st.keys():
                yield name, np.asarray(st.get_tensor(name))


def load_hf_checkpoint(ckpt_dir: str | os.PathLike, dtype: str | None = None, **overrides):
    """(config, params) from a Hugging Face checkpoint directory (config.json + safetensors)."""
    ckpt_dir = Path(ckpt_dir)
    cfg_file = ckpt_dir / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no config.json in {ckpt_dir}")
    c = config_from_hf(json.loads(cfg_file.read_text()), **overrides)
    if dtype:
        c.param_dtype = dtype
    return c, params_from_hf_tensors(iter_hf_tensors(ckpt_dir), c)


# ----------------------------------------------------------------------------- writing


def hf_tensors_from_params(params: dict, c: mlc.ConfigDict, moe_layout: str = "released"
                           ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, array) for every tensor of the HF checkpoint, one at a time."""
    flat = _flat(nn.unbox(params))
    get = lambda p: np.asarray(flat[p])
    v, t = c.vision, c.text
    yield _V + "patch_embed.proj.weight", get("vision/patch_embed/kernel").T.reshape(
        v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    yield _V + "patch_embed.proj.bias", get("vision/patch_embed/bias")
    yield _V + "pos_embed.weight", get("vision/pos_embed")
    for i in range(v.depth):
        stack, j = _vision_block_path(c, i)
        pre = f"{_V}blocks.{i}."
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
            yield pre + f"{theirs}.weight", get(f"{stack}/{ours}/scale")[j]
            yield pre + f"{theirs}.bias", get(f"{stack}/{ours}/bias")[j]
        for ours, theirs in (("attn/qkv", "attn.qkv"), ("attn/proj", "attn.proj"), ("fc1", "mlp.linear_fc1"),
                             ("fc2", "mlp.linear_fc2")):
            yield pre + f"{theirs}.weight", get(f"{stack}/{ours}/kernel")[j].T
            yield pre + f"{theirs}.bias", get(f"{stack}/{ours}/bias")[j]
    mergers = [("merger", "merger")]
    if c.deepstack:
        mergers += [(f"deepstack_mergers_{k}", f"deepstack_merger_list.{k}") for k in range(len(v.deepstack_layers))]
    for ours, theirs in mergers:
        yield f"{_V}{theirs}.norm.weight", get(f"{ours}/norm/scale")
        yield f"{_V}{theirs}.norm.bias", get(f"{ours}/norm/bias")
        for fc in ("fc1", "fc2"):
            yield f"{_V}{theirs}.linear_{fc}.weight", get(f"{ours}/{fc}/kernel").T
            yield f"{_V}{theirs}.linear_{fc}.bias", get(f"{ours}/{fc}/bias")
    yield _T + "embed_tokens.weight", get("embed")
    base = "decoder/layers"
    for i in range(t.num_layers):
        pre = f"{_T}layers.{i}."
        yield pre + "input_layernorm.weight", get(f"{base}/input_norm/scale")[i]
        yield pre + "post_attention_layernorm.weight", get(f"{base}/post_attn_norm/scale")[i]
        yield pre + "self_attn.q_norm.weight", get(f"{base}/attn/q_norm/scale")[i]
        yield pre + "self_attn.k_norm.weight", get(f"{base}/attn/k_norm/scale")[i]
        for p in ("q", "k", "v", "o"):
            yield pre + f"self_attn.{p}_proj.weight", get(f"{base}/attn/{p}_proj/kernel")[i].T
        if not t.num_experts:
            for p in ("gate", "up", "down"):
                yield pre + f"mlp.{p}_proj.weight", get(f"{base}/mlp/{p}_proj/kernel")[i].T
        else:
            yield pre + "mlp.gate.weight", get(f"{base}/moe/router")[i].T
            gate_up = np.concatenate([get(f"{base}/moe/wi_gate")[i], get(f"{base}/moe/wi_up")[i]], axis=-1)
            down = get(f"{base}/moe/wo")[i]
            if moe_layout == "transformers":
                gate_up, down = gate_up.transpose(0, 2, 1), down.transpose(0, 2, 1)
            elif moe_layout != "released":
                raise ValueError(f"moe_layout={moe_layout!r} (expected 'released' or 'transformers')")
            yield pre + "mlp.experts.gate_up_proj", gate_up
            yield pre + "mlp.experts.down_proj", down
    yield _T + "norm.weight", get("decoder/final_norm/scale")
    if not t.tie_word_embeddings:
        yield "lm_head.weight", get("lm_head").T


def save_hf_checkpoint(params: dict, c: mlc.ConfigDict, out_dir: str | os.PathLike, *,
                       max_shard_bytes: int = 4 << 30, moe_layout: str = "released") -> Path:
    """Writes config.json and safetensors shards (+ index when sharded) into `out_dir`.

    Files are written under temporary names and renamed, so a crash leaves no half checkpoint
    that looks complete.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name, arr in hf_tensors_from_params(params, c, moe_layout):
        arr = np.ascontiguousarray(arr)
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
        if size >= max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    n = len(shards)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tmp = out / (fname + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / fname)
        for name, arr in shard.items():
            weight_map[name] = fname
            total += arr.nbytes
        shard.clear()
    if n > 1:
        _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                           "weight_map": weight_map})
    _write_json(out / "config.json", hf_config_from(c))
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- tree helpers


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, p + "/"))
        else:
            out[p] = v
    return out


def _unflat(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def host_params(params: dict) -> dict:
    """Params as numpy arrays (for writing)."""
    return jax.tree.map(np.asarray, nn.unbox(params))
