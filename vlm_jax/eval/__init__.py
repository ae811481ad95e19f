"""Evaluation: task families and metrics, the batched harness, baselines, visualisations, the CLI.

    python -m vlm_jax.eval --checkpoint=DIR --tasks=grounding,counting [--split=eval] [--num=100] [--out=DIR]

    python -m vlm_jax.eval --benchmark=docvqa --data=DIR --ckpt=CKPT [--num=100] [--out=DIR]

Modules: `metrics` (reply -> score, never raises on model text), `tasks` (families, item loading),
`harness` (`evaluate`, `EvalReport`, `trivial_baselines`), `visualize` (PNG boxes and points),
`benchmark_metrics` (the public benchmarks' metric definitions: ANLS, relaxed accuracy, OCRBench,
option extraction, circular evaluation, temporal IoU), `benchmarks` (their readers, prompts and runner).
"""
