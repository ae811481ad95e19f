"""Video files decoded with PyAV: containers, frame indices and pixels, seeking, bad files, the processor."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tests.video_files import CONTAINERS, TOLERANCE, colour, frame_ids, write_video
from vlm_jax.data import processor as proc
from vlm_jax.data import sources
from vlm_jax.data.sources import SampleError, VideoFile

pytest.importorskip("av")


def assert_frames(frames: np.ndarray, expected: list[int], num_frames: int) -> None:
    assert frames.dtype == np.uint8 and frames.shape[0] == len(expected)
    np.testing.assert_array_equal(frame_ids(frames, num_frames), expected)
    want = np.stack([np.broadcast_to(colour(t), frames.shape[1:]) for t in expected]).astype(int)
    assert np.abs(frames.astype(int) - want).max() <= TOLERANCE


@pytest.mark.parametrize("ext", sorted(CONTAINERS))
def test_containers_give_the_frames_asked_for(tmp_path, ext):
    path = write_video(tmp_path / f"clip.{ext}", 30, fps=10, height=48, width=64)
    video = VideoFile(path)
    assert video.shape == (30, 48, 64, 3) and len(video) == 30 and video.fps == pytest.approx(10.0)
    picks = [17, 0, 29, 5, 5, 12]  # any order, repeats
    assert_frames(video[picks], picks, 30)
    assert_frames(video[3][None], [3], 30)
    assert_frames(video[25:], [25, 26, 27, 28, 29], 30)
    every = np.asarray(video)
    assert_frames(every, list(range(30)), 30)


def test_seeking_decodes_only_what_the_wanted_frames_need(tmp_path):
    # A keyframe every 10 frames: frame k needs the frames from the keyframe before it.
    path = write_video(tmp_path / "clip.mp4", 90, fps=30, keyint=10)
    video = VideoFile(path)
    assert_frames(video[[88, 3, 47]], [88, 3, 47], 90)
    assert video.decoded_frames <= (3 + 1) + (7 + 1) + (8 + 1) + 3  # from keyframes 0, 40, 80 (+ reorder slack)
    before = video.decoded_frames
    np.asarray(video)
    assert video.decoded_frames - before == 90


def test_processor_reads_only_its_sampled_frames_and_matches_decoding_all(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 90, fps=30, keyint=10)
    lazy, eager = VideoFile(path), np.asarray(VideoFile(path))
    cfg = proc.get_config(video_min_pixels=32 * 32, video_max_pixels=64 * 64 * 32)
    for budget in (None, 8):
        a = proc.process_video(lazy, lazy.fps, cfg, token_budget=budget)
        b = proc.process_video(eager, 30.0, cfg, token_budget=budget)
        np.testing.assert_array_equal(a["frame_indices"], b["frame_indices"])
        np.testing.assert_array_equal(a["grid_thw"], b["grid_thw"])
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
        assert a["timestamps"] == b["timestamps"]
    want = proc.sample_frame_indices(90, 30.0, cfg)  # 2 fps over 3 s: 6 frames
    assert len(np.unique(want)) == 6
    fresh = VideoFile(path)
    proc.process_video(fresh, fresh.fps, cfg)
    assert fresh.decoded_frames < 45  # seeking: well under the 90 frames of the file


def test_in_order_reading_without_timestamps(tmp_path):
    video = VideoFile(write_video(tmp_path / "clip.mkv", 20))
    video._pts = None  # as for a stream without usable timestamps: decode from the start, count frames
    assert_frames(video[[2, 9, 9, 4]], [2, 9, 9, 4], 20)
    assert video.decoded_frames == 10


def test_decode_video_and_sample_give_lazy_files_with_container_fps(tmp_path):
    path = write_video(tmp_path / "clip.webm", 12, fps=6)
    v = sources.decode_video(path, default_fps=2.0)
    assert isinstance(v["frames"], VideoFile) and v["fps"] == pytest.approx(6.0)
    assert v["frames"].shape == (12, 48, 64, 3)
    with open(path, "rb") as f:
        from_bytes = sources.decode_video(f.read())
    assert_frames(from_bytes["frames"][[11, 0]], [11, 0], 12)
    assert sources.decode_video({"frames": path, "fps": 3.0})["fps"] == 3.0  # a given rate wins
    clone = pickle.loads(pickle.dumps(v["frames"]))
    assert_frames(clone[[1]], [1], 12)


def _cut(src: str, dst, fraction: float) -> str:
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return os.fspath(dst)


def test_bad_files_name_the_file_and_the_reason(tmp_path):
    def error(path) -> str:
        with pytest.raises(SampleError) as e:
            sources.decode_video(os.fspath(path), where="sample s video 0")
        assert e.value.reason in ("bad_video", "missing_file")
        assert os.fspath(path) in str(e.value) and "sample s video 0" in str(e.value)
        return str(e.value)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "cannot be opened" in error(garbage)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "empty (0 bytes)" in error(empty)
    assert "no video stream" in error(write_video(tmp_path / "zero.mp4", 0))
    assert "no video frames" in error(write_video(tmp_path / "zero.avi", 0))
    full = write_video(tmp_path / "full.mp4", 40, keyint=10)
    assert "cannot be opened" in error(_cut(full, tmp_path / "cut.mp4", 0.5))  # the index is at the end
    fast = write_video(tmp_path / "fast.mp4", 40, keyint=10, faststart=True)
    assert "truncated" in error(_cut(fast, tmp_path / "cut_fast.mp4", 0.6))
    mkv = write_video(tmp_path / "full.mkv", 40, keyint=10)
    assert "truncated" in error(_cut(mkv, tmp_path / "cut.mkv", 0.4))
    avi = write_video(tmp_path / "full.avi", 40)
    assert "truncated" in error(_cut(avi, tmp_path / "cut.avi", 0.6))
    with pytest.raises(SampleError) as e:
        VideoFile(os.fspath(tmp_path / "nope.mp4"))
    assert e.value.reason == "missing_file"
