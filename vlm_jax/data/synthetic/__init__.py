"""The synthetic world: the built-in default dataset (procedural, deterministic, infinite).

Usage::

    from vlm_jax.data.synthetic import SyntheticWorld, SyntheticSource, default_config
    world = SyntheticWorld()                         # or SyntheticWorld(image_size=(96, 96), max_count=8)
    s = world.sample(123)                            # train split, any index >= 0
    e = world.sample(5, "eval", task="count")        # fixed held-out split (1000 per split by default)
    src = SyntheticSource(world, "train", length=10**6)   # grain RandomAccessDataSource
    score(e["answer"], "3")                          # 1.0 / 0.0 (`vlm_jax.eval.metrics.score`)

A sample (a dict; all numbers plain Python / numpy, ``answer`` and ``meta`` JSON-able)::

    {"id": "syn-s0-train-mix-00000123", "task": "count", "source": "synthetic",
     "images": [uint8 [H, W, 3], ...],
     "videos": [{"frames": uint8 [T, H, W, 3], "fps": 2.0}, ...],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many ...?"}]},
                  {"role": "assistant", "content": "3"}],     # + "reasoning": str for task "thinking"
     "answer": {"count": 3},          # or bbox_2d / point_2d / value / text / time (see eval/metrics.py)
     "meta": {"plan": {...}, "boxes": ..., "split": ..., "index": ..., "base_task": ...}}

Media items come first in the user content, in the order of ``images`` / ``videos``. Frame ``t`` of a
video is at ``t / fps`` seconds. Tasks: ``TASKS``. Grounding answers are Qwen3-VL JSON text with
integer coordinates in [0, 1000] (see ``tasks/``).
"""

from vlm_jax.data.synthetic.jsonl import read_jsonl, sample_to_record, write_jsonl
from vlm_jax.data.synthetic.tasks import TASKS
from vlm_jax.data.synthetic.vocab import ASSET_PATH as TOKENIZER_PATH
from vlm_jax.data.synthetic.vocab import SPECIAL_IDS, SPECIAL_TOKENS, load_tokenizer
from vlm_jax.data.synthetic.world import DEFAULT_TASK_WEIGHTS, SyntheticSource, SyntheticWorld, default_config
from vlm_jax.eval.metrics import score  # the one scoring stack (eval harness, self-checks, RL rewards)

__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "SPECIAL_IDS",
    "SPECIAL_TOKENS",
    "TASKS",
    "TOKENIZER_PATH",
    "SyntheticSource",
    "SyntheticWorld",
    "default_config",
    "load_tokenizer",
    "read_jsonl",
    "sample_to_record",
    "score",
    "write_jsonl",
]
