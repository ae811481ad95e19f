"""Box conventions -> Qwen3-VL [0, 1000] and back: hand-computed cases, round trips, malformed input."""

from __future__ import annotations

import numpy as np
import pytest

from vlm_jax.data import boxes


def test_hand_computed_conversions():
    # The official fine-tuning tools' example: [146, 137, 615, 415] in a 640 x 428 COCO image.
    # 146 / 640 * 1000 = 228.125, 137 / 428 * 1000 = 320.09, 615 / 640 * 1000 = 960.94, 415 / 428 * 1000 = 969.63.
    assert boxes.pixels_to_qwen3([146, 137, 615, 415], 640, 428, rounded=True) == [228, 320, 961, 970]
    assert boxes.pixels_to_qwen3([146, 137, 615, 415], 640, 428) == pytest.approx(
        [228.125, 320.0934579, 960.9375, 969.6261682])
    # Qwen2.5-VL saw that image resized to multiples of 28 (its notebook: 644 x 420 under 1280 * 28 * 28
    # pixels); its pixel boxes are in that frame.
    assert boxes.qwen25_image_size(640, 428, max_pixels=14 * 14 * 4 * 1280) == (644, 420)
    assert boxes.pixels_to_qwen3([161, 134, 619, 407], 644, 420, rounded=True) == [250, 319, 961, 969]
    # COCO [x, y, w, h]: [10, 20, 30, 40] in 100 x 200 -> xyxy [10, 20, 40, 60] -> [100, 100, 400, 300].
    assert boxes.coco_to_pixels([10, 20, 30, 40]) == [10, 20, 40, 60]
    assert boxes.coco_to_qwen3([10, 20, 30, 40], 100, 200) == [100, 100, 400, 300]
    assert boxes.qwen3_to_coco([100, 100, 400, 300], 100, 200) == pytest.approx([10, 20, 30, 40])
    # Qwen-VL's grid ends at 999 (its evaluation divides by 999): 999 -> 1000, 499.5 -> 500.
    assert boxes.qwen_vl_to_qwen3([0, 499.5, 999, 999]) == pytest.approx([0, 500, 1000, 1000])
    assert boxes.qwen3_to_qwen_vl([0, 500, 1000, 1000]) == [0, 500, 999, 999]  # 499.5 rounds half to even
    assert boxes.qwen3_to_pixels([250, 500, 750, 1000], 640, 480) == [160, 240, 480, 480]


def test_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = rng.integers(1, 4000, 2)
        x = np.sort(rng.uniform(0, w, 2))
        y = np.sort(rng.uniform(0, h, 2))
        px = [x[0], y[0], x[1], y[1]]
        q = boxes.pixels_to_qwen3(px, w, h)
        assert all(0 <= v <= 1000 for v in q)
        np.testing.assert_allclose(boxes.qwen3_to_pixels(q, w, h), px, rtol=1e-9, atol=1e-9)
        coco = boxes.pixels_to_coco(px)
        np.testing.assert_allclose(boxes.qwen3_to_coco(boxes.coco_to_qwen3(coco, w, h), w, h), coco, atol=1e-6)
        np.testing.assert_allclose(boxes.qwen_vl_to_qwen3(boxes.qwen3_to_qwen_vl(q)), q, atol=1000 / 999 / 2 + 1e-9)
        # Rounded (the training format) is within half a unit of the exact value.
        np.testing.assert_allclose(boxes.pixels_to_qwen3(px, w, h, rounded=True), q, atol=0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: boxes.pixels_to_qwen3([1, 2, 3], 10, 10), "pixel box must be 4 numbers"),
    (lambda: boxes.pixels_to_qwen3("1234", 10, 10), "pixel box must be 4 numbers"),
    (lambda: boxes.pixels_to_qwen3([1, 2, "3", 4], 10, 10), "pixel box must be 4 numbers"),
    (lambda: boxes.pixels_to_qwen3([True, 2, 3, 4], 10, 10), "pixel box must be 4 numbers"),
    (lambda: boxes.pixels_to_qwen3([1, 2, float("nan"), 4], 10, 10), "non-finite"),
    (lambda: boxes.pixels_to_qwen3([5, 2, 3, 4], 10, 10), "x2 < x1 or y2 < y1"),
    (lambda: boxes.pixels_to_qwen3([1, 2, 11, 4], 10, 10), r"outside its frame \[0, 10\] x \[0, 10\]"),
    (lambda: boxes.pixels_to_qwen3([1, 2, 3, 4], 0, 10), "image size must be positive"),
    (lambda: boxes.coco_to_qwen3([1, 2, -3, 4], 10, 10), "negative width or height"),
    (lambda: boxes.qwen3_to_pixels([0, 0, 1001, 5], 10, 10), r"Qwen3-VL box .* outside its frame \[0, 1000\]"),
    (lambda: boxes.qwen_vl_to_qwen3([0, 0, 1000, 5]), r"Qwen-VL box .* outside its frame \[0, 999\]"),
])
def test_malformed_boxes_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_clip_keeps_stray_annotations_inside():
    assert boxes.pixels_to_qwen3([-0.5, 0, 10.2, 5], 10, 10, clip=True) == [0, 0, 1000, 500]
    assert boxes.qwen3_to_pixels([0, 0, 1000.4, 500], 10, 10, clip=True) == [0, 0, 10, 5]
    assert boxes.pixels_to_qwen3(np.array([1, 2, 3, 4], np.float32), np.int64(10), 10) == pytest.approx(
        [100, 200, 300, 400])  # numpy inputs are numbers too
