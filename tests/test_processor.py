"""vlm_jax.data.processor against the Hugging Face Qwen3-VL image/video processors, plus bad inputs.

Parity tests build the HF processors locally with Qwen3-VL's released settings (patch 16, merge 2,
mean/std 0.5, image pixels 65536..16777216, video pixels 4096..25165824). HF's default image backend and
its video processor need torchvision; where it is missing, the video pipeline is checked against HF's own
pieces (frame sampling, smart_resize, patchify, timestamps) around torch's uint8 bicubic kernel, which is
what torchvision's `resize` runs on CPU.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import processor as P

IMAGE_SIZE = {"shortest_edge": 65536, "longest_edge": 16777216}
VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}
QWEN = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
# Tiny, huge, extreme aspect both ways, odd, below the factor, already aligned.
IMAGE_SIZES = [(20, 20), (3000, 4000), (32, 3000), (3000, 32), (375, 499), (257, 1023), (1, 150), (512, 512)]


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth(h, w, seed=0):
    # Natural-looking content (gradients and edges), where the two resamplers agree most of the time.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / 7.0 + seed), np.cos(xx / 5.0), np.sin((xx + yy) / 11.0)], -1)
    return ((base + 1) * 127.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parity
def test_smart_resize_matches_hf():
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_image
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_video

    rng = np.random.default_rng(0)
    sizes = IMAGE_SIZES + [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    sizes = [(h, w) for h, w in sizes if max(h, w) / min(h, w) <= 200]
    for h, w in sizes:
        assert P.smart_resize(h, w) == hf_image(h, w, 32, 65536, 16777216), (h, w)
        n = int(rng.integers(2, 100))
        assert P.video_smart_resize(n, h, w) == hf_video(n, h, w, 2, 32, 4096, 25165824), (n, h, w)
        assert P.image_grid_thw(h, w) == (1, *(s // 16 for s in hf_image(h, w, 32, 65536, 16777216)))


# ------------------------------------------------------------------------------------------------
# Images


def _assert_image_equals_hf(hf, resample: str, size: tuple[int, int], seed: int) -> None:
    """Our `process_image` with `image_resample=resample` gives HF processor `hf`'s grid and pixels exactly."""
    img = Image.fromarray(_noise((*size, 3), seed=seed))
    ours = P.process_image(img, P.get_config(image_resample=resample))
    ref = hf(images=[img], return_tensors="np")
    assert ours["pixel_values"].dtype == np.float32 and ours["grid_thw"].dtype == np.int32
    np.testing.assert_array_equal(ours["grid_thw"], ref["image_grid_thw"])
    np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])  # max abs diff 0


@pytest.mark.parity
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_image_pil_backend_equals_hf(size):
    """`image_resample="pil"` equals HF's PIL backend (Qwen2VLImageProcessorPil) exactly."""
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _assert_image_equals_hf(Qwen2VLImageProcessorPil(size=IMAGE_SIZE, **QWEN), "pil", size, seed=size[0])


@pytest.mark.parity
@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_image_modes_convert_like_hf(mode):
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    hf = Qwen2VLImageProcessorPil(size=IMAGE_SIZE, **QWEN)
    img = Image.fromarray(_noise((61, 83, 4), seed=3), "RGBA").convert(mode)
    ours = P.process_image(img)
    ref = hf(images=[img], return_tensors="np")
    np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values"])
    if mode == "RGBA":  # the same pixels as a uint8 array: HF blends alpha onto white in numpy
        arr = np.asarray(img)
        ref = hf(images=[arr], return_tensors="np")
        np.testing.assert_array_equal(P.process_image(arr)["pixel_values"], ref["pixel_values"])


def test_image_array_inputs():
    rgb = _noise((50, 70, 3))
    base = P.process_image(rgb)["pixel_values"]
    opaque = np.dstack([rgb, np.full((50, 70, 1), 255, np.uint8)])
    np.testing.assert_array_equal(P.process_image(opaque)["pixel_values"], base)
    np.testing.assert_array_equal(P.process_image(Image.fromarray(rgb))["pixel_values"], base)
    grey = _noise((50, 70))
    np.testing.assert_array_equal(P.process_image(grey)["pixel_values"],
                                  P.process_image(np.repeat(grey[..., None], 3, -1))["pixel_values"])


@pytest.mark.parity
def test_torch_resampler_is_bit_exact():
    """`resize_uint8(..., "torch")` equals torch's uint8 antialiased bicubic (torchvision's CPU path)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    cases = [(50, 70, 32, 64), (20, 20, 256, 256), (375, 500, 384, 512), (33, 300, 32, 288), (7, 5, 1, 3),
             (1, 150, 64, 8000)] + [tuple(int(v) for v in rng.integers(1, 200, 4)) for _ in range(60)]
    for i, (h, w, nh, nw) in enumerate(cases):
        a = _noise((h, w, 3), seed=i) if i % 2 else _smooth(h, w, seed=i)
        ref = torch.nn.functional.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None].contiguous(),
                                              size=(nh, nw), mode="bicubic", antialias=True,
                                              align_corners=False)
        np.testing.assert_array_equal(P.resize_uint8(a, nh, nw, "torch"), ref[0].permute(1, 2, 0).numpy(),
                                      err_msg=f"{h}x{w} -> {nh}x{nw}")
    # Batched frames resize independently.
    frames = _noise((3, 40, 30, 3), seed=9)
    out = P.resize_uint8(frames, 64, 32, "torch")
    for f, o in zip(frames, out):
        np.testing.assert_array_equal(P.resize_uint8(f, 64, 32, "torch"), o)


@pytest.mark.parity
@pytest.mark.parametrize("size", [(20, 20), (32, 3000), (375, 499), (257, 1023)])
def test_image_torch_backend_equals_hf_torchvision(size):
    """`image_resample="torch"` equals HF's default backend (Qwen2VLImageProcessor, torchvision)."""
    pytest.importorskip("torchvision")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    _assert_image_equals_hf(Qwen2VLImageProcessor(size=IMAGE_SIZE, **QWEN), "torch", size, seed=size[1])


def test_backends_differ_by_at_most_a_few_levels():
    """The two HF resamplers are not identical; on natural content they agree to within 2 grey levels."""
    a = _smooth(375, 499)
    p = P.resize_uint8(a, 384, 512, "pil").astype(int)
    t = P.resize_uint8(a, 384, 512, "torch").astype(int)
    assert np.abs(p - t).max() <= 2 and (p != t).mean() < 0.02


def test_patch_layout():
    """Rows are (merge-block row, block col, row in block, col in block); a row is (C, T, y, x)."""
    h, w = 64, 96  # multiples of 32; identity normalisation so pixel values are the raw bytes
    cfg = P.get_config(min_pixels=32 * 32, image_mean=(0.0,) * 3, image_std=(1.0,) * 3,
                            rescale_factor=1.0)
    img = np.zeros((h, w, 3), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[..., 0], img[..., 1], img[..., 2] = yy, xx, (yy // 16) * 10 + xx // 16
    out = P.process_image(img, cfg)
    np.testing.assert_array_equal(out["grid_thw"], [[1, 4, 6]])
    pv = out["pixel_values"].reshape(-1, 3, 2, 16, 16)
    order = [(bh * 2 + mh, bw * 2 + mw)
             for bh in range(2) for bw in range(3) for mh in range(2) for mw in range(2)]
    for row, (ph, pw) in enumerate(order):
        np.testing.assert_array_equal(pv[row, 0, 0], yy[ph * 16:(ph + 1) * 16, pw * 16:(pw + 1) * 16])
        np.testing.assert_array_equal(pv[row, 1, 1], xx[ph * 16:(ph + 1) * 16, pw * 16:(pw + 1) * 16])
        assert (pv[row, 2] == ph * 10 + pw).all()  # both temporal slots hold the (repeated) frame


# ------------------------------------------------------------------------------------------------
# Bad inputs


def test_load_image_errors_name_the_path(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_noise((64, 64, 3))).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(300))
    missing = tmp_path / "missing.png"

    assert P.load_image(good).size == (64, 64)
    with pytest.raises(ValueError, match="truncated") as e:
        P.load_image(truncated)
    assert str(truncated) in str(e.value)
    with pytest.raises(ValueError, match="cannot decode image") as e:
        P.load_image(corrupt)
    assert str(corrupt) in str(e.value)
    with pytest.raises(FileNotFoundError, match="not found") as e:
        P.load_image(missing)
    assert str(missing) in str(e.value)


def test_load_image_composites_transparency_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel; the rest is transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = np.asarray(P.load_image(tmp_path / "t.png"))
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (10, 20, 30) and (out[1:] == 255).all()


def test_load_image_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(_noise((40, 60, 3))).save(path, exif=exif)
    assert P.load_image(path).size == (40, 60)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"zero size \(height=0, width=10\)"):
        P.process_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="zero size"):
        P.process_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ValueError, match=r"aspect ratio 201\.0 .* exceeds the maximum of 200"):
        P.process_image(np.zeros((32, 32 * 201, 3), np.uint8))
    P.process_image(np.zeros((32, 32 * 200, 3), np.uint8))  # 200:1 is allowed
    with pytest.raises(ValueError, match="uint8"):
        P.process_image(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        P.process_image(np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(ValueError, match="at least one frame"):
        P.process_video(np.zeros((0, 32, 32, 3), np.uint8), 30.0)
    with pytest.raises(ValueError, match="video_fps must be positive"):
        P.process_video(np.zeros((4, 32, 32, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="image_resample"):
        P.get_config(image_resample="bilinear")


# ------------------------------------------------------------------------------------------------
# Videos


def _hf_sample(total, fps, cfg):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    stub = types.SimpleNamespace(fps=cfg.video_fps, min_frames=cfg.video_min_frames,
                                 max_frames=cfg.video_max_frames)
    return Qwen3VLVideoProcessor.sample_frames(stub, VideoMetadata(total_num_frames=total, fps=fps))


@pytest.mark.parity
def test_sample_frame_indices_match_hf():
    pytest.importorskip("transformers")
    cfg = P.DEFAULT_CONFIG
    for total, fps in [(8, 4.0), (13, 6.0), (3, 1.0), (1, 24.0), (300, 30.0), (1001, 29.97), (100000, 25.0),
                       (90, 2.0), (5, 30.0)]:
        hf = _hf_sample(total, fps, cfg)
        ours = P.sample_frame_indices(total, fps, cfg)
        assert len(ours) % 2 == 0
        np.testing.assert_array_equal(ours[: len(hf)], hf)
        assert (ours[len(hf):] == hf[-1]).all()  # padding repeats the last frame
    assert len(P.sample_frame_indices(100000, 25.0)) == 768  # max_frames
    assert len(P.sample_frame_indices(30, 30.0)) == 4  # 2 frames at 2 fps, raised to min_frames


def _hf_video_reference(frames, fps, cfg, indices=None, longest_edge=None):
    """HF's Qwen3VLVideoProcessor pipeline from its own functions, torch's uint8 bicubic as the resize."""
    torch = pytest.importorskip("torch")
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize

    if indices is None:
        indices = _hf_sample(len(frames), fps, cfg)
    video = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2).contiguous()
    h, w = smart_resize(len(indices), video.shape[-2], video.shape[-1], 2, 32, 4096, longest_edge or 25165824)
    if (h, w) != tuple(video.shape[-2:]):
        video = torch.nn.functional.interpolate(video, size=(h, w), mode="bicubic", antialias=True,
                                                align_corners=False)
    mean = torch.tensor([0.5] * 3) * (1.0 / (1 / 255))  # HF's fused rescale + normalise
    video = (video.to(torch.float32) - mean.view(-1, 1, 1)) / mean.view(-1, 1, 1)
    pv, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, video[None], 16, 2, 2)
    ts = Qwen3VLProcessor._calculate_timestamps(None, np.asarray(indices), fps, 2)
    return pv[0].numpy(), [gt, gh, gw], ts


@pytest.mark.parity
@pytest.mark.parametrize("shape,fps", [((8, 64, 96), 4.0), ((13, 50, 70), 6.0), ((9, 20, 300), 3.0),
                                       ((3, 100, 100), 1.0), ((30, 120, 160), 30.0)])
def test_video_equals_hf_pipeline(shape, fps):
    pytest.importorskip("transformers")
    frames = _noise((*shape, 3), seed=shape[0])
    ours = P.process_video(frames, fps)
    pv, grid, ts = _hf_video_reference(frames, fps, P.DEFAULT_CONFIG)
    np.testing.assert_array_equal(ours["grid_thw"], [grid])
    np.testing.assert_array_equal(ours["pixel_values"], pv)
    assert ours["timestamps"] == ts
    assert len(ours["frame_indices"]) == 2 * grid[0]


@pytest.mark.parity
@pytest.mark.parametrize("cap", [False, True])
def test_video_equals_hf_video_processor(cap):
    """End to end against Qwen3VLVideoProcessor (needs torchvision)."""
    pytest.importorskip("torchvision")
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = Qwen3VLVideoProcessor(size=VIDEO_SIZE, cap_pixels_per_frame=cap, **QWEN)
    cfg = P.get_config(video_cap_pixels_per_frame=cap)
    for shape, fps in [((8, 64, 96), 4.0), ((13, 50, 70), 6.0), ((40, 240, 320), 10.0)]:
        frames = _noise((*shape, 3), seed=shape[1])
        ours = P.process_video(frames, fps, cfg)
        ref = hf(videos=[frames], video_metadata=[VideoMetadata(total_num_frames=shape[0], fps=fps)],
                 return_metadata=True, return_tensors="np")
        np.testing.assert_array_equal(ours["grid_thw"], ref["video_grid_thw"])
        np.testing.assert_array_equal(ours["pixel_values"], ref["pixel_values_videos"])
        meta = ref["video_metadata"][0]
        assert ours["timestamps"] == Qwen3VLProcessor._calculate_timestamps(None, meta.frames_indices, fps, 2)


def _tokens(grid):
    return grid[0] * grid[1] * grid[2] // 4


@pytest.mark.parity
def test_video_token_budget():
    pytest.importorskip("transformers")
    frames = _smooth(240, 320)[None].repeat(40, 0)
    frames[:, :4, :4] = np.arange(40)[:, None, None, None]  # tell frames apart
    fps = 10.0
    full = P.process_video(frames, fps)
    assert _tokens(full["grid_thw"][0]) == 4 * 8 * 10  # 8 frames -> 4 groups of 240x320 (8x10 tokens)

    # A budget that is not binding changes nothing.
    same = P.process_video(frames, fps, token_budget=320)
    np.testing.assert_array_equal(same["pixel_values"], full["pixel_values"])

    # Stage 1: same frames, lower resolution, equal to HF with the matching pixel budget.
    cfg = P.get_config(video_min_tokens_per_frame=16)
    small = P.process_video(frames, fps, cfg, token_budget=100)
    assert _tokens(small["grid_thw"][0]) <= 100 and small["grid_thw"][0][0] == 4
    np.testing.assert_array_equal(small["frame_indices"], full["frame_indices"])
    pv, grid, ts = _hf_video_reference(frames, fps, cfg, indices=small["frame_indices"],
                                       longest_edge=(100 // 4) * 1024 * 8)
    np.testing.assert_array_equal(small["pixel_values"], pv)
    assert small["timestamps"] == ts

    # Stage 2: below the per-group floor, fewer groups spread over the whole clip.
    fewer = P.process_video(frames, fps, cfg, token_budget=40)
    g = fewer["grid_thw"][0]
    assert _tokens(g) <= 40 and g[0] == 40 // 16
    assert fewer["frame_indices"][0] == 0 and fewer["frame_indices"][-1] == 39
    assert fewer["timestamps"][0] < fewer["timestamps"][-1]
    assert P.video_grid_thw(40, 240, 320, fps, cfg, token_budget=40) == tuple(g)

    with pytest.raises(ValueError, match="token_budget 1 is too small"):
        P.process_video(_noise((8, 32, 3200, 3)), fps, token_budget=1)


def test_video_grid_thw_predicts_process_video():
    for shape, fps, budget in [((8, 64, 96), 4.0, None), ((40, 240, 320), 10.0, 100),
                               ((17, 33, 500), 5.0, None)]:
        out = P.process_video(_noise((*shape, 3)), fps, token_budget=budget)
        assert P.video_grid_thw(*shape, fps, token_budget=budget) == tuple(out["grid_thw"][0])
        assert out["pixel_values"].shape == (math.prod(out["grid_thw"][0]), 1536)


def test_format_timestamp():
    assert P.format_timestamp(3.0) == "<3.0 seconds>"
    assert P.format_timestamp(0.25) == "<0.2 seconds>"  # f"{t:.1f}", as Qwen3VLProcessor
    assert P.format_timestamp(1.75) == "<1.8 seconds>"
    assert P.format_timestamp(3.0, "hms") == "<00:00:03>"
    assert P.format_timestamp(3661.5, "hms") == "<01:01:02>"
    rng = np.random.default_rng(0)
    seen = {P.format_timestamp(2.0, "random", rng) for _ in range(20)}
    assert seen == {"<2.0 seconds>", "<00:00:02>"}
    with pytest.raises(ValueError, match="unknown timestamp format"):
        P.format_timestamp(1.0, "frames")


def test_config_is_frozen_and_validated():
    cfg = P.get_config()
    assert (cfg.factor, cfg.patch_dim) == (32, 1536)
    small = P.get_config(patch_size=14)  # derived keys follow the patch keys
    assert (small.factor, small.patch_dim) == (28, 3 * 2 * 14 * 14)
    with pytest.raises(AttributeError):
        cfg.patch_size = 14
    with pytest.raises(ValueError, match="min_pixels"):
        P.get_config(min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) processor\.max_pixel;"):
        P.get_config(max_pixel=5)
    with pytest.raises(ValueError, match=r"processor\.patch_dim=1000 is derived"):
        P.get_config(patch_dim=1000)
    assert P.get_config(cfg.to_dict()) == cfg  # a saved config (derived keys included) loads back


def test_llm_grids_and_the_merger_keys():
    from vlm_jax.configs.model import CHOICES

    assert CHOICES["merger"] == P.MERGERS  # the processor's view of the model's key
    grids = np.asarray([[1, 14, 20], [2, 8, 6], [0, 0, 0]])  # an image, a video clip, a padding row
    np.testing.assert_array_equal(P.llm_grids(grids, "mlp", 64, 2), grids)
    # The resampler: a (1, side * merge, side * merge) grid per entry, side * side tokens; padding stays 0.
    np.testing.assert_array_equal(P.llm_grids(grids, "resampler", 64, 2), [[1, 16, 16], [1, 16, 16], [0, 0, 0]])
    np.testing.assert_array_equal(P.config_llm_grids(grids[:1], P.get_config(merger="resampler",
                                                                               resampler_num_queries=9)), [[1, 6, 6]])
    with pytest.raises(ValueError, match="merger must be one of"):
        P.llm_grids(grids, "perceiver", 64, 2)
    with pytest.raises(ValueError, match=r"processor\.merger must be one of \('mlp', 'resampler'\), got 'perceiver'"):
        P.get_config(merger="perceiver")
    with pytest.raises(ValueError, match=r"processor\.resampler_num_queries=60 must be a positive square"):
        P.get_config(merger="resampler", resampler_num_queries=60)
    assert P.get_config(resampler_num_queries=60).merger == "mlp"  # the MLP merger does not read it
    P.check_videos_supported("mlp", 2)
    P.check_videos_supported("resampler", 0)
    with pytest.raises(ValueError, match=r"1 video\(s\) with merger='resampler'"):
        P.check_videos_supported("resampler", 1)
