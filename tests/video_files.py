"""Small video files for tests, written with PyAV: frame t is a solid colour that identifies t."""

from __future__ import annotations

import os

import numpy as np

# (extension, codec, codec options): near-lossless settings, so pixels identify frames.
CONTAINERS = {
    "mp4": ("libx264", {"crf": "0"}),
    "mov": ("libx264", {"crf": "0"}),
    "mkv": ("libx264", {"crf": "0"}),
    "webm": ("libvpx-vp9", {"lossless": "1"}),
    "avi": ("mpeg4", {"qscale": "1"}),
}
# Largest per-pixel error of the round trip through the codecs above (RGB -> YUV 4:2:0 -> RGB).
TOLERANCE = 12


def colour(t: int) -> np.ndarray:
    """The colour of frame t: a 6x6x6 grid with 40 levels between neighbours (216 distinct frames)."""
    return np.array([20 + 40 * (t % 6), 20 + 40 * (t // 6 % 6), 20 + 40 * (t // 36 % 6)], np.uint8)


def frame_ids(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """The frame number whose colour is nearest to each frame's mean colour."""
    palette = np.stack([colour(t) for t in range(num_frames)]).astype(np.float64)
    means = np.asarray(frames, np.float64).reshape(len(frames), -1, 3).mean(1)
    return np.argmin(((means[:, None] - palette[None]) ** 2).sum(-1), axis=1)


def write_video(path: str | os.PathLike, num_frames: int, fps: int = 10, height: int = 48, width: int = 64,
                keyint: int | None = None, faststart: bool = False, codec: str | None = None,
                options: dict | None = None) -> str:
    """Writes frames 0..num_frames-1 (``colour(t)``) in the container named by the extension.

    ``keyint``: a keyframe every ``keyint`` frames and none elsewhere (x264 otherwise puts one at every
    colour change). ``faststart``: an mp4 / mov index at the front (so a cut file still opens).
    ``num_frames=0`` writes the container header only.
    """
    import av

    path = os.fspath(path)
    ext = path.rsplit(".", 1)[-1]
    default_codec, default_options = CONTAINERS[ext]
    codec = codec or default_codec
    opts = dict(default_options if options is None else options)
    if keyint and codec == "libx264":
        opts["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
    container_opts = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", options=container_opts) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        if keyint:
            s.codec_context.gop_size = keyint
        s.options = opts
        c.start_encoding()
        for t in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(colour(t), (height, width, 3)).copy(), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path
