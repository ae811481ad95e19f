"""The model zoo: reusable checkpoints trained on the full default synthetic world.

    python experiments/zoo.py --model=student        # or teacher; exports runs/zoo/<model>/final
    python -m vlm_jax.train --config=vlm_jax/configs/zoo.py:teacher --workdir=runs/zoo/teacher

`student` is the main job's model (the `tiny` config with 8-pixel patches); `teacher` is about 7x
larger (wider and deeper tower and decoder). Both train on every task family of the default world
(all shapes, colours, counts up to 5, videos, charts, OCR, geometry, thinking, text) with the main
job's learning-rate split, each sized to finish in about an hour on a 2-core CPU, and are scored on
every held-out family. Distillation, RL and the ablation sweeps start from these exports
(`ZOO_DIR/<model>/final`).
"""

from __future__ import annotations

import ml_collections as mlc

from vlm_jax.configs import synthetic_tiny

ZOO_DIR = "runs/zoo"
MODELS = ("student", "teacher")
EVAL_FAMILIES = ("counting", "grounding", "pointing", "ocr", "caption", "chart", "spatial", "multiple_choice",
                 "temporal", "text")


def get_config(model: str = "student") -> mlc.ConfigDict:
    if model not in MODELS:
        raise ValueError(f"unknown zoo model {model!r}; choose from {', '.join(MODELS)}")
    c = synthetic_tiny.get_config()
    c.stage = f"zoo_{model}"
    c.model.name = f"qwen3-vl-zoo-{model}"
    c.description = f"zoo {model}: {'tiny' if model == 'student' else '7x tiny'} on the full default world"
    # The default world (every task family), with the main job's binding lever: questions before images.
    c.data.sources.synthetic.world = {"question_first": 1.0}
    # Videos (8 frames = 4 temporal patches of 64 patches) and multi-image samples need a larger buffer.
    c.data.pipeline.update(max_patches=6144, max_grids=160)
    t = c.train
    if model == "teacher":
        c.model.vision.update(hidden_size=128, intermediate_size=512, depth=6, num_heads=4, deepstack_layers=(1, 3),
                              full_attention_layers=(2, 5))
        c.model.text.update(hidden_size=256, intermediate_size=768, num_layers=8, num_heads=8, num_kv_heads=4)
        t.num_train_steps = 900  # ~3.5 s a step on 2 cores
        # The main job's curriculum at two thirds of its length (333 steps): 500 of 900 would leave the full
        # world too few; a larger model needs fewer steps to place and bind one or two objects.
        c.data.curriculum = tuple({**dict(stage), "steps": stage["steps"] * 2 // 3} for stage in c.data.curriculum)
    else:
        t.num_train_steps = 3000  # ~1 s a step on 2 cores (videos and multi-image samples)
    t.checkpoint.every_steps = 300
    c.eval.tasks = EVAL_FAMILIES
    c.eval.max_new_tokens = 64
    c.log.progress = False
    return c
