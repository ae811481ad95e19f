"""The Qwen3-VL training recipe as experiment configs: S0 -> S1 -> S2 -> S3 -> SFT 32K -> SFT 256K.

Each stage is a file here whose `get_config(arg)` calls `stage_config`:

    python -m vlm_jax.train --config=vlm_jax/configs/recipe/s0_align.py:8b
    python -m vlm_jax.train --config=vlm_jax/configs/recipe/s1_multimodal.py:8b      # init_from runs/s0_align
    python -m vlm_jax.train --config=vlm_jax/configs/recipe/sft_32k.py:size=8b,thinking=True

`arg` is `SIZE` or `key=value` pairs: `size` (a model size, default 8b), `scale` ("full": the
report's sequence lengths and token budgets; "tiny": the same recipe shrunk to run on a CPU,
what `experiments/recipe_tiny.py` runs) and `thinking` (SFT only: the Thinking chat template,
so samples with a reasoning trace train as `<think>...</think>` chain of thought).

What follows the reports (DIGEST 3): which parts train (S0 the merger only), the sequence
lengths (8K, 8K, 32K, 256K; SFT at 32K then 256K), the token budgets, square-root loss
reweighting in pre-training, assistant-only loss in SFT (the chat template's loss mask), the
official fine-tuning learning rates for SFT (LLM 1e-5, vision 1e-6, merger 1e-5), and a
text-only share at every stage. What is ours: the pre-training learning rates and batch sizes
(the reports give none), and the data mixtures, written as weights over the synthetic world's
task families standing in for the report's data categories. Real data replaces them by setting
`config.data.sources` (JSONL / ArrayRecord sources, see `vlm_jax.train.data`).

Every stage but S0 starts from the previous stage's exported params: `init_from` defaults to
`runs/<previous stage>` (the previous run's default workdir); S0 starts from `init_from` too when
set (a converted Hugging Face checkpoint dir), else from a random init.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections as mlc

from vlm_jax.configs import args, experiment

TINY_LENGTH_DIVISOR = 32
# Full-scale batches are per process (pipeline.batch_size); token budgets -> steps assume this many.
REFERENCE_PROCESSES = 64
SCALES = ("full", "tiny")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    previous: str  # stage whose exported params this one starts from ("" = none)
    seq_len: int  # full scale
    tokens: float  # full-scale training tokens (SFT: samples x mean tokens, an estimate)
    trainable: tuple[str, ...]  # of "vision", "merger", "llm"
    lrs: Mapping[str, float]  # full-scale peak lr per module
    tasks: Mapping[str, float]  # synthetic-world task mixture
    loss_normalization: str = "sqrt"
    sft: bool = False
    tiny_video_frames: int = 8  # longer synthetic videos for the long-context stages

    @property
    def tiny_seq_len(self) -> int:
        """The full-scale length over `TINY_LENGTH_DIVISOR`: the stages keep the report's ratios (8K : 32K :
        256K = 256 : 1024 : 8192 tokens), so S3 and SFT 256K rows (batch 4) are 32K-token steps on a CPU."""
        return self.seq_len // TINY_LENGTH_DIVISOR


_CAPTION_OCR = {"caption": 4.0, "ocr": 2.0, "chart_value": 1.0}
_ALL = {"caption": 1.0, "ground_box": 2.0, "ground_point": 1.0, "count": 2.0, "count_boxes": 1.0,
        "count_points": 1.0, "ocr": 1.0, "chart_value": 1.0, "chart_compare": 1.0, "geometry": 1.0,
        "spatial": 1.0, "multi_image": 1.0, "video_temporal": 0.5, "video_count": 0.5, "text": 2.0}
_LONG = {**_ALL, "text": 3.0, "video_temporal": 2.0, "video_count": 2.0, "multi_image": 2.0}
_ULTRA = {"video_temporal": 3.0, "video_count": 3.0, "multi_image": 2.0, "ocr": 1.0, "caption": 1.0, "text": 2.0}
_SFT = {**_ALL, "thinking": 2.0}

_PRETRAIN_LR = {"llm": 2e-5, "merger": 2e-5, "vision": 2e-6}
_SFT_LR = {"llm": 1e-5, "merger": 1e-5, "vision": 1e-6}  # the official fine-tuning code's defaults
_ALL_PARTS = ("vision", "merger", "llm")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("s0_align", "S0 vision-language alignment: merger only, ViT and LLM frozen, 8K", "",
          8192, 67e9, ("merger",), {"merger": 1e-3, "llm": 0.0, "vision": 0.0}, _CAPTION_OCR),
    Stage("s1_multimodal", "S1 multimodal pre-training: everything trains, 8K", "s0_align",
          8192, 1e12, _ALL_PARTS, _PRETRAIN_LR, _ALL),
    Stage("s2_long", "S2 long-context pre-training: 32K, more text, video and multi-image", "s1_multimodal",
          32768, 1e12, _ALL_PARTS, {k: v / 2 for k, v in _PRETRAIN_LR.items()}, _LONG, tiny_video_frames=16),
    Stage("s3_ultralong", "S3 ultra-long adaptation: 256K, long video and documents", "s2_long",
          262144, 100e9, _ALL_PARTS, {k: v / 2 for k, v in _PRETRAIN_LR.items()}, _ULTRA,
          tiny_video_frames=32),
    Stage("sft_32k", "SFT at 32K: assistant-only loss, thinking or non-thinking format", "s3_ultralong",
          32768, 1.2e6 * 2500, _ALL_PARTS, _SFT_LR, _SFT, loss_normalization="token", sft=True),
    Stage("sft_256k", "SFT at 256K: one epoch of long data mixed with the 32K data", "sft_32k",
          262144, 0.3e6 * 8000, _ALL_PARTS, _SFT_LR, {**_SFT, **_ULTRA}, loss_normalization="token",
          sft=True, tiny_video_frames=32),
)}
ORDER = tuple(STAGES)

# Tiny scale: every stage is a short run of the tiny model on the synthetic world.
_TINY = {"steps": 40, "batch_size": 4, "lr_scale": 150.0, "warmup": 4, "checkpoint_every": 20}


def parse_arg(arg: str | None) -> dict[str, object]:
    """`"8b"` or `"size=8b,scale=tiny,thinking=True"` -> {"size", "scale", "thinking"}."""
    return args.parse_arg(arg, bare="size", where="recipe config arg", size="8b", scale="full", thinking=False)


def stage_config(stage: str, size: str = "8b", scale: str = "full", thinking: bool = False) -> mlc.ConfigDict:
    """The experiment config of one recipe stage (validated)."""
    if stage not in STAGES:
        raise ValueError(f"unknown recipe stage {stage!r}; stages: {', '.join(ORDER)}")
    if scale not in SCALES:
        raise ValueError(f"unknown recipe scale {scale!r}; expected one of {SCALES}")
    s = STAGES[stage]
    if thinking and not s.sft:
        raise ValueError(f"thinking=True applies to the SFT stages only, not {stage!r}")
    tiny = scale == "tiny"
    c = experiment.base_config(size)
    c.stage = stage + ("_thinking" if thinking else "")
    c.description = s.description
    c.init_from = f"runs/{s.previous}" if s.previous else ""

    t = c.train
    o = t.optimizer
    o.freeze_vision, o.freeze_merger, o.freeze_llm = (p not in s.trainable for p in _ALL_PARTS)
    lr_scale = _TINY["lr_scale"] if tiny else 1.0
    o.llm_lr, o.merger_lr, o.vision_lr = (s.lrs[p] * lr_scale for p in ("llm", "merger", "vision"))
    if tiny:
        # Stage lrs in the same proportions; S0's 1e-3 stays (150x would diverge).
        o.merger_lr = min(o.merger_lr, 3e-3)
    seq_len = s.tiny_seq_len if tiny else s.seq_len
    rows = _TINY["batch_size"] if tiny else max(1, (2**22 // seq_len) // REFERENCE_PROCESSES)
    if tiny:
        t.num_train_steps = _TINY["steps"]
        o.warmup_steps = _TINY["warmup"]
        o.min_lr_ratio = 0.1
        t.checkpoint.every_steps = _TINY["checkpoint_every"]
        t.checkpoint.keep = 1
    else:
        t.num_train_steps = max(1, int(s.tokens // (rows * seq_len * REFERENCE_PROCESSES)))
        o.warmup_steps = min(2000, t.num_train_steps // 10)
        t.checkpoint.every_steps = 1000
        t.parallel.update(data=1, fsdp=-1)
        t.remat_policy = "full" if seq_len > 8192 else "dots"

    world: dict[str, object] = {"tasks": dict(s.tasks)}
    if tiny and s.tiny_video_frames != 8:
        world["video_frames"] = s.tiny_video_frames
    c.data.sources.synthetic.world = world
    # Long stages hold more visual tokens per row: scale the vision buffer with the row length.
    patches = max(2048, seq_len * 2) if tiny else seq_len * 2
    c.data.pipeline.update(seq_len=seq_len, batch_size=rows, max_patches=patches, max_grids=max(64, seq_len // 16),
                           loss_normalization=s.loss_normalization)
    if thinking:
        c.data.pipeline.thinking = "thinking"
    if tiny:
        c.data.pipeline.processor.update(min_pixels=64 * 64, max_pixels=64 * 64)
        c.model.vision.attention_block = 64  # 16-patch frames; see synthetic_tiny.py
        t.remat_policy = "full"
        if seq_len > 1024:
            c.model.attention_impl = "xla_chunked"  # memory linear in the row length (kernels/chunked_attention.py)
    else:
        # Blocked ViT attention sized for frames up to 1024 x 1024 pixels; larger frames take the
        # (exact, slower) dense path. Keeps ViT attention memory linear in the patch buffer.
        c.model.vision.attention_block = 4096
    c.eval.tasks = ("counting", "grounding") if s.sft else ()
    c.log.every_steps = 10 if tiny else 50
    experiment.validate(c)
    return c


def from_arg(stage: str, arg: str | None) -> mlc.ConfigDict:
    """`get_config(arg)` of a stage file."""
    return stage_config(stage, **parse_arg(arg))
