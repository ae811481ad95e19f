"""Model configs: `tiny` for tests and the CPU main job, and the published Qwen3-VL sizes.

Usage: `get_config("8b")`, or on the command line `--config=vlm_jax/configs/model.py:8b`.
Every size starts from `base_config()`, so a key that is not in the base is an error (the
ConfigDicts are locked), and `validate()` checks values that must agree with each other. A key
with a fixed set of values accepts only those in `CHOICES`: each is implemented.
"""

from __future__ import annotations

import ml_collections as mlc

from vlm_jax.configs.validate import check_keys

# Published Qwen3-VL vision towers: SigLIP2-Large-like for 2B/4B, SigLIP2-SO400M-like otherwise.
_VIT_LARGE = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, deepstack_layers=(5, 11, 17))
_VIT_SO400M = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, deepstack_layers=(8, 16, 24))

# Text backbones of the released checkpoints (Hugging Face config.json values).
_TEXT = {
    "2b": dict(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8,
               tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, num_kv_heads=8,
               tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8),
    "32b": dict(hidden_size=5120, intermediate_size=25600, num_layers=64, num_heads=64, num_kv_heads=8),
    "30b-a3b": dict(hidden_size=2048, intermediate_size=6144, num_layers=48, num_heads=32, num_kv_heads=4,
                    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
    "235b-a22b": dict(hidden_size=4096, intermediate_size=12288, num_layers=94, num_heads=64, num_kv_heads=4,
                      num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536),
}
_VISION = {"2b": _VIT_LARGE, "4b": _VIT_LARGE}

# Published totals (billions of parameters, safetensors) that `param_count` must match within 2%.
PUBLISHED_TOTAL_B = {"2b": 2.13, "4b": 4.44, "8b": 8.77, "32b": 33.4, "30b-a3b": 31.1, "235b-a22b": 236.0}

# Ids of the vision special tokens in the synthetic-world tokenizer, used by the small configs.
TINY_TOKEN_IDS = {"vision_start": 9, "vision_end": 10, "image": 12, "video": 13}

SIZES = ("tiny", "tiny-moe", "100m", *_TEXT)

DTYPES = ("float32", "bfloat16", "float16")
# The values each enumerated key accepts; every one is implemented (tests/test_config.py runs each).
CHOICES = {
    "vision.attention": ("full", "window"),  # model/vision.py
    "text.mrope_layout": ("interleaved", "chunked"),  # model/rope.py
    "text.rope_scaling.rope_type": ("default", "yarn"),  # model/rope.py text_rope_frequencies
    "text.moe_impl": ("ragged", "dense", "expert_parallel"),  # model/moe.py, parallel/expert.py
    "text.moe_gmm": ("ragged_dot", "megablox", "tiled"),  # model/grouped_matmul.py GMM_IMPLS
    "merger": ("mlp", "resampler"),  # model/merger.py, data/processor.py MERGERS
    "remat_policy": ("none", "full", "dots", "dots_no_batch", "minimal"),  # model/layers.py REMAT_POLICIES
    "attention_impl": ("xla", "xla_chunked", "splash", "gpu", "cudnn"),  # kernels/attention.py IMPLS
    "context_parallel": ("none", "all_gather", "ring"),  # parallel/context.py STRATEGIES
    "video_time_encoding": ("timestamps", "absolute_time"),  # data/processor.py VIDEO_TIME_ENCODINGS
    "dtype": DTYPES,
    "param_dtype": DTYPES,
}


def base_config() -> mlc.ConfigDict:
    """All model keys with Qwen3-VL defaults (the 8B-shaped tower)."""
    c = mlc.ConfigDict()
    c.name = "qwen3-vl"

    v = c.vision = mlc.ConfigDict()
    v.depth = 27
    v.hidden_size = 1152
    v.intermediate_size = 4304
    v.num_heads = 16
    v.in_channels = 3
    v.patch_size = 16
    v.temporal_patch_size = 2
    v.spatial_merge_size = 2
    v.num_position_embeddings = 2304  # a 48 x 48 learned grid, bilinearly resampled per image
    # Init of that grid (only matters from scratch; checkpoints overwrite it): "normal" (std 0.02, as
    # HF) or "sincos" (2D sine-cosine times `pos_embed_init_scale`, a smooth position code from step 0).
    v.pos_embed_init = "normal"
    v.pos_embed_init_scale = 1.0
    v.rope_theta = 10000.0
    v.layer_norm_eps = 1e-6
    v.deepstack_layers = (8, 16, 24)  # ViT layers whose outputs feed the DeepStack mergers
    # Ablation (Qwen2.5-VL): windowed attention in all but `full_attention_layers`.
    v.attention = "full"  # "full" | "window"
    v.window_size = 128  # pixels; must be a multiple of patch_size * spatial_merge_size
    v.full_attention_layers = (7, 15, 23, 31)
    # Patches per attention block of the flat patch sequence (0 = one dense [P, P] mask). Set it to
    # at least the largest frame (max_pixels / patch_size^2) to make ViT attention cost linear in P;
    # a longer frame falls back to the dense path (exact either way, see kernels/attention.py).
    v.attention_block = 0

    t = c.text = mlc.ConfigDict()
    t.vocab_size = 151936
    t.hidden_size = 4096
    t.intermediate_size = 12288
    t.num_layers = 36
    t.num_heads = 32
    t.num_kv_heads = 8
    t.head_dim = 128
    t.rms_norm_eps = 1e-6
    t.rope_theta = 5_000_000.0
    t.mrope_section = (24, 20, 20)  # frequency pairs given to (t, h, w); sums to head_dim // 2
    t.mrope_layout = "interleaved"  # "interleaved" (Qwen3-VL) | "chunked" (Qwen2/2.5-VL ablation)
    t.max_position_embeddings = 262144
    # Rope scaling, the keys of transformers' `rope_parameters`. "yarn" (arXiv 2309.00071) stretches the
    # low frequencies by `factor` past `original_max_position_embeddings` and scales cos/sin by an attention
    # factor (None: 0.1 * ln(factor) + 1, or the mscale ratio when both mscale keys are set).
    r = t.rope_scaling = mlc.ConfigDict()
    r.rope_type = "default"  # "default" (plain RoPE; the other keys keep their defaults) | "yarn"
    r.factor = 1.0
    r.original_max_position_embeddings = None  # the training length; required by yarn
    r.beta_fast = 32.0
    r.beta_slow = 1.0
    r.mscale = None
    r.mscale_all_dim = None
    r.attention_factor = None
    r.truncate = True
    t.tie_word_embeddings = False
    # Mixture of experts: num_experts == 0 means dense SwiGLU layers.
    t.num_experts = 0
    t.num_experts_per_tok = 0
    t.moe_intermediate_size = 0
    t.norm_topk_prob = True
    t.router_aux_loss_coef = 0.001
    t.moe_impl = "ragged"  # "ragged" (sorted tokens + grouped matmul) | "dense" (every expert, for tests)
    # | "expert_parallel" (tokens sent to the devices holding their experts: the mesh's expert axis)
    # grouped matmul of ragged / expert_parallel: "ragged_dot" | "megablox" (TPU) | "tiled" (CPU)
    t.moe_gmm = "ragged_dot"
    # expert_parallel only: 0 = dropless; c > 0 bounds each expert shard's buffer to c x its balanced
    # share of token copies, dropping (and counting) the rest.
    t.moe_capacity_factor = 0.0

    # The data side reads both through the processor config (placeholders per image, their MRoPE grid), whose
    # values experiment configs tie to these (vlm_jax/configs/experiment.py).
    c.merger = "mlp"  # "mlp" (Qwen2/3-VL 2x2 MLP merger) | "resampler" (Qwen-VL cross-attention ablation)
    c.resampler_num_queries = 256
    c.deepstack = True  # False: the "no DeepStack" ablation (mergers are not built or applied)
    # Init std of the mergers' output layers, as a multiple of 0.02 (0: zeros). From scratch, visual
    # tokens that start at zero add no noise to the decoder, which otherwise learns to stop reading them.
    c.merger_out_init_scale = 1.0
    # From-scratch switch, not in Qwen3-VL: subtract from each frame's visual tokens (and DeepStack
    # features) their mean over the frame. The decoder reads tokens through RMSNorm, i.e. by direction;
    # a shared component grown by the mergers makes every token of an image look alike (cosine ~1).
    c.merger_center = False

    # How the decoder learns when a video frame was shown. "timestamps" (Qwen3-VL): the prompt has a text
    # timestamp ("<1.0 seconds>") before each temporal group of 2 frames, each group its own
    # vision_start/vision_end block whose MRoPE temporal id is the running position. "absolute_time" (the
    # Qwen2.5-VL ablation): no timestamp text, a video is one block, and temporal group g gets the temporal
    # id start + int(g * second_per_grid * video_tokens_per_second) (second_per_grid = temporal_patch_size /
    # sampled fps), so ids follow time; text after a visual block continues at max(ids so far) + 1. Only the
    # prompt layout and position ids change (no parameter does); the data side reads both keys through the
    # processor config, whose values experiment configs tie to these (vlm_jax/configs/experiment.py).
    c.video_time_encoding = "timestamps"  # "timestamps" | "absolute_time"
    # absolute_time only: temporal ids per second of video (HF Qwen2.5-VL vision_config.tokens_per_second).
    c.video_tokens_per_second = 2.0

    c.image_token_id = 151655
    c.video_token_id = 151656
    c.vision_start_token_id = 151652
    c.vision_end_token_id = 151653

    c.param_dtype = "float32"
    c.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
    c.remat_policy = "none"  # "none" | "full" | "dots" | "dots_no_batch" | "minimal"
    # Layers per iteration of the layer scans (decoder and ViT). At least the depth unrolls them fully:
    # straight-line code with no per-layer residuals stacked into scan buffers, faster for a few small
    # layers on CPU, at a longer compile. The param tree is the same either way.
    c.scan_unroll = 1
    # "xla" | "xla_chunked" (flash attention in plain JAX, memory linear in length) | "splash" (TPU) |
    # "gpu" (Pallas Triton, CUDA) | "cudnn" (GPU, bfloat16/float16 compute); see vlm_jax/kernels/attention.py.
    c.attention_impl = "xla"
    # Let "splash" / "gpu" run on a platform that cannot compile them, in Pallas interpret mode (slow: tests).
    c.attention_interpret = False
    # Text attention over the mesh's `sequence` axis (training / no-cache forward; a no-op when that
    # axis is 1): "none" (the compiler partitions it) | "all_gather" (gather K/V) | "ring" (pass K/V
    # around, online softmax). See vlm_jax/parallel/context.py.
    c.context_parallel = "none"
    # Causal load balancing: the decoder runs its layers with each row in reorder_sequence order
    # (shard i holds chunks i and 2cp-1-i of 2cp); needs the row length divisible by 2 x sequence.
    c.context_parallel_load_balance = False
    return c


def get_config(size: str = "tiny") -> mlc.ConfigDict:
    """Returns the validated, locked model config for `size` (see `SIZES`)."""
    size = size.lower()
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    c = base_config()
    c.name = f"qwen3-vl-{size}"
    if size in ("tiny", "tiny-moe"):
        # ViT attention a block per frame of up to 256 patches (224 x 224 images at patch 16), as
        # HF attends per image; exact for any input (kernels/attention.py falls back otherwise).
        c.vision.update(depth=4, hidden_size=64, intermediate_size=128, num_heads=4,
                        num_position_embeddings=64, deepstack_layers=(1, 2), full_attention_layers=(1, 3),
                        attention_block=256)
        c.text.update(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=32, mrope_section=(6, 5, 5), tie_word_embeddings=True,
                      max_position_embeddings=8192)
        c.scan_unroll = 4  # every layer scan unrolled (see base_config)
        # Special tokens sit at the synthetic-world tokenizer's ids (data/build_tokenizer.py).
        c.update(image_token_id=TINY_TOKEN_IDS["image"], video_token_id=TINY_TOKEN_IDS["video"],
                 vision_start_token_id=TINY_TOKEN_IDS["vision_start"], vision_end_token_id=TINY_TOKEN_IDS["vision_end"])
        if size == "tiny-moe":
            c.text.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64)
    elif size == "100m":
        c.vision.update(depth=6, hidden_size=384, intermediate_size=1536, num_heads=6,
                        num_position_embeddings=1024, deepstack_layers=(1, 3, 5), full_attention_layers=(2, 5),
                        attention_block=256)
        c.update(image_token_id=TINY_TOKEN_IDS["image"], video_token_id=TINY_TOKEN_IDS["video"],
                 vision_start_token_id=TINY_TOKEN_IDS["vision_start"], vision_end_token_id=TINY_TOKEN_IDS["vision_end"])
        c.text.update(vocab_size=32768, hidden_size=512, intermediate_size=2048, num_layers=12, num_heads=8,
                      num_kv_heads=4, head_dim=64, mrope_section=(12, 10, 10), tie_word_embeddings=True)
    else:
        c.vision.update(_VISION.get(size, _VIT_SO400M))
        c.text.update(_TEXT[size])
    validate(c)
    c.lock()
    return c


def validate(c: mlc.ConfigDict) -> None:
    """Fails with a message naming the key when values are inconsistent or unsupported."""
    check_keys(c, base_config(), "model")
    v, t = c.vision, c.text

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"invalid model config: {msg}")

    need(v.hidden_size % v.num_heads == 0, f"vision.hidden_size={v.hidden_size} not divisible by num_heads")
    need((v.hidden_size // v.num_heads) % 4 == 0, "vision head dim must be a multiple of 4 (2D RoPE)")
    side = int(round(v.num_position_embeddings ** 0.5))
    need(side * side == v.num_position_embeddings,
         f"vision.num_position_embeddings={v.num_position_embeddings} is not a square grid")
    need(all(0 <= i < v.depth for i in v.deepstack_layers),
         f"vision.deepstack_layers={tuple(v.deepstack_layers)} outside [0, depth={v.depth})")
    for key, choices in CHOICES.items():
        section, _, leaf = key.rpartition(".")
        value = (c[section] if section else c)[leaf]
        need(value in choices, f"{key}={value!r} (expected one of {', '.join(choices)})")
    need(v.attention_block >= 0, f"vision.attention_block={v.attention_block} must be >= 0")
    need(c.scan_unroll >= 1, f"scan_unroll={c.scan_unroll} must be >= 1")
    unit = v.patch_size * v.spatial_merge_size
    need(v.window_size % unit == 0, f"vision.window_size={v.window_size} is not a multiple of {unit} pixels")
    need(t.num_heads % t.num_kv_heads == 0, f"text.num_heads={t.num_heads} not divisible by num_kv_heads")
    need(t.head_dim % 2 == 0, "text.head_dim must be even")
    need(sum(t.mrope_section) == t.head_dim // 2,
         f"text.mrope_section={tuple(t.mrope_section)} must sum to head_dim // 2 = {t.head_dim // 2}")
    _validate_rope_scaling(t.rope_scaling, need)
    if t.num_experts:
        need(0 < t.num_experts_per_tok <= t.num_experts,
             f"text.num_experts_per_tok={t.num_experts_per_tok} must be in [1, num_experts={t.num_experts}]")
        need(t.moe_intermediate_size > 0, "text.moe_intermediate_size must be > 0 for an MoE model")
    need(t.moe_capacity_factor >= 0, f"text.moe_capacity_factor={t.moe_capacity_factor} must be >= 0 (0: dropless)")
    need(t.moe_capacity_factor == 0 or t.moe_impl == "expert_parallel",
         f"text.moe_capacity_factor={t.moe_capacity_factor} needs text.moe_impl='expert_parallel' "
         f"(got {t.moe_impl!r}, which is dropless)")
    need(t.moe_gmm == "ragged_dot" or t.moe_impl != "dense",
         f"text.moe_gmm={t.moe_gmm!r} is a grouped matmul; text.moe_impl='dense' uses none")
    if c.merger == "resampler":
        side = int(round(c.resampler_num_queries ** 0.5))
        need(side * side == c.resampler_num_queries,
             f"resampler_num_queries={c.resampler_num_queries} must be a square (queries sit on a 2D grid)")
    need(not (c.deepstack and c.merger == "resampler"),
         "deepstack=True needs merger='mlp' (the resampler changes the visual token count)")
    if c.deepstack:
        need(len(v.deepstack_layers) <= t.num_layers, "more DeepStack levels than decoder layers")
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        need(0 <= c[k] < t.vocab_size, f"{k}={c[k]} outside the vocabulary (vocab_size={t.vocab_size})")
    need(c.video_tokens_per_second > 0, f"video_tokens_per_second={c.video_tokens_per_second} must be > 0")
    need(c.video_time_encoding == "absolute_time" or c.video_tokens_per_second == base_config().video_tokens_per_second,
         f"video_tokens_per_second={c.video_tokens_per_second} is only used with video_time_encoding='absolute_time'")
    need(not c.context_parallel_load_balance or c.context_parallel != "none",
         "context_parallel_load_balance=True needs context_parallel 'all_gather' or 'ring'")
    if c.attention_impl in ("splash", "gpu") and not c.attention_interpret:
        from vlm_jax.kernels.attention import platform_problem  # imports jax: only for these impls

        problem = platform_problem(c.attention_impl)
        need(problem is None, f"attention_impl={c.attention_impl!r}: {problem} (attention_interpret=True runs it "
             "in Pallas interpret mode, for tests)")
    need(c.attention_impl != "cudnn" or c.dtype in ("bfloat16", "float16"),
         f"attention_impl='cudnn' needs dtype bfloat16 or float16, got {c.dtype!r} (cuDNN flash attention has no "
         "float32 kernel)")


def _validate_rope_scaling(r: mlc.ConfigDict, need) -> None:
    """rope_type 'default' leaves every other key at its default; 'yarn' gets values transformers can use."""
    where = "text.rope_scaling"
    if r.rope_type == "default":
        defaults = base_config().text.rope_scaling
        for k in sorted(r.keys()):
            need(r[k] == defaults[k], f"{where}.{k}={r[k]!r} is only used with {where}.rope_type='yarn'")
        return

    # factor, betas and truncate are typed fields (ConfigDict rejects a wrong type); the None ones are not.
    need(r.factor >= 1.0, f"{where}.factor={r.factor} must be >= 1 (the context length multiplier)")
    orig = r.original_max_position_embeddings
    need(isinstance(orig, int) and not isinstance(orig, bool) and orig > 0,
         f"{where}.original_max_position_embeddings={orig!r} must be a positive int (the training length) for yarn")
    need(r.beta_fast >= r.beta_slow > 0,
         f"{where}.beta_fast={r.beta_fast} and beta_slow={r.beta_slow} must satisfy beta_fast >= beta_slow > 0")
    for k, low in (("mscale", 0.0), ("mscale_all_dim", 0.0), ("attention_factor", None)):
        x = r[k]
        if x is None:
            continue
        need(isinstance(x, (int, float)) and not isinstance(x, bool), f"{where}.{k}={x!r} must be a number or None")
        need(x > 0 if low is None else x >= low, f"{where}.{k}={x} must be {'> 0' if low is None else '>= 0'}")


def vision_head_dim(c: mlc.ConfigDict) -> int:
    return c.vision.hidden_size // c.vision.num_heads
