"""FLOP counting for MFU: attention counts only the (query, key) pairs the masks allow."""

import numpy as np
import pytest

from vlm_jax.configs.model import get_config
from vlm_jax.train import loop
from vlm_jax.train import metrics as metrics_lib

TINY = get_config("tiny")  # text: 4 layers x 4 heads x 32; vision: 4 layers, width 64
NO_PARAMS = {"text": 0.0, "lm_head": 0.0, "vision": 0.0, "merger": 0.0}  # attention FLOPs alone
ALL = {"llm": True, "merger": True, "vision": True}


def _window_vision(**kw):
    v = TINY.vision.to_dict()
    v.update(attention="window", window_size=32, patch_size=16, **kw)  # 2 x 2-patch windows
    from ml_collections import ConfigDict

    return ConfigDict(v)


def test_text_pairs_are_per_packed_segment():
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    # Segments of 3, 2 and 4 tokens: (9 + 4 + 16) / 2; padding and cross-segment pairs count nothing.
    assert metrics_lib.text_attention_pairs(seg) == 14.5
    assert metrics_lib.text_attention_pairs(np.stack([seg, seg])) == 29.0  # a micro-batch axis: more rows
    assert metrics_lib.text_attention_pairs(np.ones((1, 6), int)) == 18.0  # one full row: S^2 / 2
    with pytest.raises(ValueError, match="segment_ids must be >= 0"):
        metrics_lib.text_attention_pairs(-seg)


def test_vision_pairs_are_per_frame_and_window():
    grid = np.array([[1, 4, 4], [2, 2, 4], [0, 0, 0]])
    # Full attention within each frame: one 16-patch frame, two 8-patch frames.
    assert metrics_lib.vision_attention_pairs(grid, TINY.vision) == 16**2 + 2 * 8**2
    # Windowed layers (0 and 2 of 4): 4x4 frame -> four 4-patch windows (64 pairs); each 2x4 frame
    # -> two 4-patch windows (32 pairs, 64 for both). Mean over layers: (2 * 384 + 2 * 128) / 4.
    assert metrics_lib.vision_attention_pairs(grid, _window_vision()) == 256.0
    # A 3x3 frame with 2-patch windows: windows of 2x2, 2x1, 1x2, 1x1 -> 16 + 4 + 4 + 1 pairs.
    assert metrics_lib.vision_attention_pairs([[1, 3, 3]], _window_vision(full_attention_layers=())) == 25.0


def test_step_attention_flops_by_hand():
    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    grid = np.array([[1, 4, 4], [2, 2, 4]])
    batch = {"segment_ids": seg, "grid_thw": grid}
    tokens, patches, text_pairs, vision_pairs = loop._batch_counts(batch, TINY.vision)
    assert (tokens, patches, text_pairs, vision_pairs) == (9.0, 32.0, 14.5, 384.0)
    kw = dict(tokens=tokens, patches=patches, text_pairs=text_pairs, vision_pairs=vision_pairs)
    # 4 FLOPs (QK^T + AV) x width x pairs x layers forward, x3 for forward + backward.
    text = 4 * (4 * 32) * 14.5 * 4 * 3
    vision = 4 * 64 * 384 * 4 * 3
    assert metrics_lib.step_flops(TINY, NO_PARAMS, trainable=ALL, **kw) == text + vision
    # The same tokens as one 9-token sequence would be 81 / 2 pairs: packing saves attention work.
    one = metrics_lib.step_flops(TINY, NO_PARAMS, trainable=ALL, **dict(kw, text_pairs=40.5))
    assert one - (text + vision) == pytest.approx(text * (40.5 / 14.5 - 1))
    # Frozen vision and merger: the tower runs forward only (x1); the LLM still trains (x3).
    frozen = dict(ALL, vision=False, merger=False)
    assert metrics_lib.step_flops(TINY, NO_PARAMS, trainable=frozen, **kw) == pytest.approx(text + vision / 3)
    # Parameters: 6 per weight per token or patch (per merged 2x2 group for the merger: 32 / 4 groups);
    # a frozen merger under a trained LLM with a frozen tower: forward only (2), nothing below trains.
    counts = {"text": 10.0, "lm_head": 1.0, "vision": 5.0, "merger": 2.0}
    assert metrics_lib.step_flops(TINY, counts, trainable=ALL, **kw) == pytest.approx(
        text + vision + (10 + 1) * 9 * 6 + 5 * 32 * 6 + 2 * 8 * 6)
    assert metrics_lib.step_flops(TINY, counts, trainable=frozen, **kw) == pytest.approx(
        text + vision / 3 + (10 + 1) * 9 * 6 + 5 * 32 * 2 + 2 * 8 * 2)


def test_throughput_benchmark_2b_is_the_published_model_on_the_world_tokenizer():
    """`benchmarks/train_throughput.py --configs 2b` (the GPU MFU run) builds the released 2B shapes with the
    synthetic world's special-token ids."""
    import ml_collections as mlc

    from benchmarks import train_throughput as tt
    from vlm_jax.configs import model as model_configs
    from vlm_jax.params.count import count_params

    c = mlc.ConfigDict(tt.model_dict("2b", "bfloat16", "cudnn"))
    model_configs.validate(c)
    assert (c.text.num_layers, c.vision.depth, c.attention_impl, c.dtype) == (28, 24, "cudnn", "bfloat16")
    assert c.image_token_id == model_configs.TINY_TOKEN_IDS["image"]
    total = count_params(mlc.ConfigDict(tt.model_dict("2b", "bfloat16")))["total"] / 1e9  # traced: xla here
    assert abs(total - model_configs.PUBLISHED_TOTAL_B["2b"]) < 0.03 * model_configs.PUBLISHED_TOTAL_B["2b"], total
    shallow = count_params(mlc.ConfigDict(tt.model_dict("2b-shallow", "float32")))["total"] / 1e9
    assert shallow < 0.5 * total


@pytest.mark.slow  # ~30 s: compiles and runs the tiny step
def test_throughput_benchmark_measures_the_step_alone(capsys):
    """`--noloop` measures the jitted step alone: no pipeline or loop figures."""
    import json

    from benchmarks import train_throughput as tt

    assert tt.main(["--configs=tiny", "--noloop", "--seq=128", "--batch=8", "--step_reps=1", "--max_patches=1024",
                    "--max_grids=16"]) == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert "loop" not in r and "pipeline" not in r
    assert r["step_only"]["step_seconds"] > 0 and 0 < r["step_only"]["mfu"] < 1
