"""Video decoding speed: the frames the processor samples from a 60 s 720p clip, vs decoding every frame.

    python benchmarks/video_decode.py [--seconds 60] [--height 720] [--width 1280] [--fps 30] [--keyint 60]

Writes the clip itself (H.264 in mp4, a keyframe every `--keyint` frames, a moving pattern; see
`write_clip`) to a temporary directory, then times, alternating repetition by repetition
(`common.interleaved`, after one untimed warm-up read of a few frames):
  decode_all:   every frame decoded and converted to RGB (what reading a video into an array costs);
  sampled:      `sources.VideoFile` (one demux pass, then seek + decode) reading the processor's frames
                at `--sample-fps` (default 2, the released checkpoints' rate);
  sparse:       the same at `--sparse-fps` (fewer frames than keyframes: seeking skips whole GOPs).
Reported per contender: median wall and CPU seconds, frames returned and frames the decoder produced,
decoded frames/s and returned frames/s (wall), decoded frames per CPU second, and the speed-up over
decode_all (wall and CPU; on a busy machine the CPU figures are the steadier ones). The host block
(`common.host_report`) has the load average at start and end. Progress goes to stderr;
stdout is one JSON object.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.common import host_report, host_start, interleaved, log, median, print_json, rate  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.data import processor as proc  # noqa: E402
from vlm_jax.data.sources import VideoFile  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_integer("seconds", 60, "clip length in seconds", flag_values=FLAGS)
flags.DEFINE_integer("height", 720, "frame height", flag_values=FLAGS)
flags.DEFINE_integer("width", 1280, "frame width", flag_values=FLAGS)
flags.DEFINE_integer("fps", 30, "clip frame rate", flag_values=FLAGS)
flags.DEFINE_integer("keyint", 60, "frames between keyframes (x264's own default is 250)", flag_values=FLAGS)
flags.DEFINE_float("sample-fps", 2.0, "the processor's sampling rate (processor video_fps)", flag_values=FLAGS)
flags.DEFINE_float("sparse-fps", 0.25, "a sparser sampling rate, below one frame per GOP", flag_values=FLAGS)
flags.DEFINE_integer("reps", 2, "timed repetitions per contender (2: one forward, one reversed)", flag_values=FLAGS)


def write_clip(path: str, seconds: int, height: int, width: int, fps: int, keyint: int) -> dict:
    """An H.264 mp4 (no B-frames): one GOP of a scrolling gradient with a moving square, encoded once and
    repeated, re-timed, to the full length. Decoding it costs what decoding a clip encoded throughout
    costs (every GOP starts at a keyframe), and writing it takes seconds, not the minutes of encoding
    60 s of 720p on a busy CPU. Returns the file's size and the writing time."""
    import av

    yy, xx = np.mgrid[0:height, 0:width]
    luma = ((xx + yy) * 255 // (width + height)).astype(np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes as yuv420p stacks them
    side, total = height // 6, seconds * fps
    t0 = time.perf_counter()
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = keyint
        s.options = {"preset": "ultrafast", "crf": "23",
                     "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0"}
        gop = []

        def mux(packets) -> None:
            for p in packets:
                gop.append((bytes(p), p.pts, p.dts, p.is_keyframe, p.time_base))
                c.mux(p)

        for i in range(min(keyint, total)):
            y = np.roll(luma, 4 * i, axis=1)
            x = (7 * i) % (width - side)
            y[side:2 * side, x:x + side] = (5 * i) % 256
            mux(s.encode(av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")))
        mux(s.encode())
        for k in range(1, -(-total // keyint)):
            for data, pts, dts, key, time_base in gop:
                shift = round(k * keyint / fps / time_base)
                if (pts + shift) * time_base >= seconds:
                    break
                p = av.Packet(data)
                p.pts, p.dts, p.time_base, p.stream, p.is_keyframe = pts + shift, dts + shift, time_base, s, key
                c.mux(p)
    return {"bytes": os.path.getsize(path), "write_s": round(time.perf_counter() - t0, 1)}


def decode_all(path: str) -> int:
    """Every frame decoded and converted to RGB (then dropped: 60 s of 720p is 5 GB as an array)."""
    import av

    n = 0
    with av.open(path) as c:
        for frame in c.decode(c.streams.video[0]):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def sampled_reader(path: str, sample_fps: float, counts: dict) -> callable:
    """A contender: open the file and read the frames the processor samples at `sample_fps`."""
    cfg = proc.get_config(video_fps=sample_fps, video_min_frames=2)

    def read() -> np.ndarray:
        video = VideoFile(path)
        idx = proc.sample_frame_indices(video.num_frames, video.fps, cfg)
        frames = video[idx]
        counts.update(returned=len(np.unique(idx)), decoded=video.decoded_frames)
        return frames

    return read


def measure(flag_values: flags.FlagValues) -> None:
    """Writes the clip, times the contenders, prints one JSON object."""
    a = {k.replace("-", "_"): v for k, v in flag_values.flag_values_dict().items()}
    start = host_start()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        log(f"writing a {a['seconds']} s {a['width']}x{a['height']} clip at {a['fps']} fps")
        clip = write_clip(path, a["seconds"], a["height"], a["width"], a["fps"], a["keyint"])
        t0 = time.perf_counter()
        video = VideoFile(path)
        probe_s = time.perf_counter() - t0
        video[[0, video.num_frames // 2]]  # warm-up: the decoder's and the converter's first use
        counts = {"sampled": {}, "sparse": {}}
        fns = {"decode_all": lambda: decode_all(path),
               "sampled": sampled_reader(path, a["sample_fps"], counts["sampled"]),
               "sparse": sampled_reader(path, a["sparse_fps"], counts["sparse"])}
        log(f"timing {list(fns)} x {a['reps']}")
        times = interleaved(fns, reps=a["reps"])
    total = video.num_frames
    counts["decode_all"] = {"returned": total, "decoded": total}
    base_wall, base_cpu = median(times["decode_all"]["wall"]), median(times["decode_all"]["cpu"])
    results = {}
    for name, t in times.items():
        wall, cpu = median(t["wall"]), median(t["cpu"])
        results[name] = {
            "frames_returned": counts[name]["returned"], "frames_decoded": counts[name]["decoded"],
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "decoded_frames_per_s": rate(counts[name]["decoded"], wall, 1),
            "returned_frames_per_s": rate(counts[name]["returned"], wall, 1),
            "decoded_frames_per_cpu_s": rate(counts[name]["decoded"], cpu, 1),
            "speedup_vs_decode_all_wall": rate(base_wall, wall), "speedup_vs_decode_all_cpu": rate(base_cpu, cpu),
        }
    print_json({
        "benchmark": "video_decode",
        "clip": {"seconds": a["seconds"], "size": [a["height"], a["width"]], "fps": a["fps"], "codec": "h264",
                 "keyint": a["keyint"], "frames": total, **clip},
        "probe_s": round(probe_s, 3),
        "sample_fps": a["sample_fps"], "sparse_fps": a["sparse_fps"], "reps": a["reps"],
        "results": results,
        "host": host_report(start),
    })


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: measure(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
