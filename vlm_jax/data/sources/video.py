"""Video files (mp4, webm, mov, avi, mkv, ...) decoded with PyAV, only the frames that are used.

``VideoFile(path_or_bytes)`` is a lazy uint8 ``[T, H, W, 3]`` array: opening it demuxes the file once
(packets only, nothing decoded) to learn the exact frame count, the presentation timestamp of every
frame and where the keyframes are; the rate comes from the container. Indexing it
(``video[indices]``) decodes just what those frames need: for each wanted frame it seeks to the
keyframe at or before it when that keyframe lies ahead of the decoder, else decodes forward, and only
the wanted frames are converted to RGB. The processor's ``process_video`` reads a ``VideoFile`` this
way, after planning on its shape, so fps sampling and the token budget pick the frames.

A file that cannot be opened, has no video stream or no frames, is truncated (fewer frames than the
container declares, a corrupt packet, or, where no frame count is declared (Matroska / WebM), frames
ending well before the declared duration) or fails to decode a wanted frame raises
``SampleError("bad_video", ...)`` naming the file and the reason.
"""

from __future__ import annotations

import io
import math
import os
import threading
from typing import Any, NoReturn

import numpy as np

from vlm_jax.data.sources.errors import SampleError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")


def _import_av(where: str, name: str) -> Any:
    try:
        import av
    except ImportError:
        raise SampleError(
            "bad_video",
            f"{where}: cannot decode {name!r}: PyAV is not installed (pip install av), "
            "or give the video as a directory / list of frame images or a .npy array",
        ) from None
    return av


class VideoFile:
    """A video file (path or encoded bytes) as a lazy uint8 ``[T, H, W, 3]`` array.

    ``shape``, ``dtype``, ``ndim``, ``len()``, ``fps`` come from one demux pass; ``video[key]`` (an int,
    a slice or an int array) decodes only those frames; ``np.asarray(video)`` decodes all of them.
    ``decoded_frames`` counts the frames the decoder has produced so far (the cost of the reads).
    Picklable and thread-safe; every read opens the file anew.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, src: str | bytes, where: str = "video"):
        self.src = src
        self.name = src if isinstance(src, str) else f"<{len(src)} bytes of video>"
        self.where = where
        self.decoded_frames = 0
        self._lock = threading.Lock()
        if isinstance(src, str) and not os.path.isfile(src):
            raise SampleError("missing_file", f"{where}: video file {src!r} does not exist")
        if (os.path.getsize(src) if isinstance(src, str) else len(src)) == 0:
            self._fail("is empty (0 bytes)")
        av = _import_av(where, self.name)
        try:
            with av.open(self._open_arg()) as container:
                if not container.streams.video:
                    self._fail("has no video stream")
                stream = container.streams.video[0]
                if stream.codec_context is None:
                    self._fail("has a video stream of unknown codec (truncated header, or a codec PyAV lacks)")
                self.height, self.width = int(stream.codec_context.height), int(stream.codec_context.width)
                time_base = stream.time_base
                declared = int(stream.frames or 0)
                declared_seconds = _declared_seconds(container, stream)
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                pts, keys, corrupt = [], [], 0
                for packet in container.demux(stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    corrupt += bool(packet.is_corrupt)
                    pts.append(packet.pts if packet.pts is not None else packet.dts)
                    keys.append(bool(packet.is_keyframe))
        except SampleError:
            raise
        except Exception as e:
            self._fail(f"cannot be opened or demuxed ({type(e).__name__}: {e})", e)
        if not pts:
            self._fail("has no video frames")
        if self.height <= 0 or self.width <= 0:
            self._fail(f"has zero-size frames ({self.height}x{self.width})")
        if corrupt:
            self._fail(f"is truncated or corrupt: {corrupt} of {len(pts)} packets are damaged")
        if declared and len(pts) < declared:
            self._fail(f"is truncated: the container declares {declared} frames but only {len(pts)} are present")
        self.num_frames = len(pts)
        self._time_base = float(time_base) if time_base else None
        # Frames in presentation order; seeking needs their timestamps to be known and distinct.
        if any(p is None for p in pts) or len(set(pts)) != len(pts) or self._time_base is None:
            self._pts = None
            self._keyframe_pts = None
        else:
            arr = np.asarray(pts, np.int64)
            order = np.argsort(arr, kind="stable")
            self._pts = arr[order]
            self._keyframe_pts = np.sort(arr[np.asarray(keys, bool)])
        self.fps = self._rate(rate)
        if not declared:  # Matroska / WebM declare no frame count: a cut file shows in its duration instead
            self._check_duration(declared_seconds)

    # -- construction helpers

    def _open_arg(self) -> Any:
        return self.src if isinstance(self.src, str) else io.BytesIO(self.src)

    def _fail(self, reason: str, cause: BaseException | None = None) -> NoReturn:
        raise SampleError("bad_video", f"{self.where}: video {self.name} {reason}") from cause

    def _rate(self, rate: Any) -> float:
        fps = float(rate) if rate else 0.0
        if not (math.isfinite(fps) and fps > 0) and self._pts is not None and self.num_frames > 1:
            span = float(self._pts[-1] - self._pts[0]) * self._time_base
            fps = (self.num_frames - 1) / span if span > 0 else 0.0
        if not (math.isfinite(fps) and fps > 0):
            self._fail("has no frame rate in its container")
        return fps

    def _check_duration(self, declared_seconds: float | None) -> None:
        """Fails when the frames end well before the declared duration (more than 2 frames or 0.5 s)."""
        if declared_seconds is None or self._pts is None:
            return
        end = float(self._pts[-1] - self._pts[0]) * self._time_base + 1 / self.fps
        if end < declared_seconds - max(2 / self.fps, 0.5):
            self._fail(f"is truncated: the container declares {declared_seconds:.2f} s but the frames end at "
                       f"{end:.2f} s")

    # -- the array interface

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_frames, self.height, self.width, 3)

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.asarray([key]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(self.num_frames)[key])
        return self.read(np.asarray(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(np.arange(self.num_frames))
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VideoFile({self.name!r}, shape={self.shape}, fps={self.fps:.3f})"

    # -- decoding

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """uint8 ``[len(indices), H, W, 3]``: the frames at ``indices`` (any order, repeats allowed)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.num_frames or idx.max() >= self.num_frames):
            raise IndexError(f"frame indices {idx.min()}..{idx.max()} out of range for {self.num_frames} frames")
        idx = np.where(idx < 0, idx + self.num_frames, idx)
        wanted, inverse = np.unique(idx, return_inverse=True)
        out = np.empty((len(wanted), self.height, self.width, 3), np.uint8)  # filled in place: frames are large
        if not wanted.size:
            return out
        av = _import_av(self.where, self.name)
        try:
            with av.open(self._open_arg()) as container:
                stream = container.streams.video[0]
                if self._pts is None:
                    self._read_in_order(container, stream, wanted, out)
                else:
                    self._read_seeking(container, stream, wanted, out)
        except SampleError:
            raise
        except Exception as e:
            self._fail(f"cannot be decoded ({type(e).__name__}: {e})", e)
        return out if np.array_equal(wanted, idx) else out[inverse]

    def _count(self) -> None:
        with self._lock:
            self.decoded_frames += 1

    def _put_rgb(self, frame: Any, out: np.ndarray, k: int) -> None:
        rgb = frame.to_ndarray(format="rgb24")
        if rgb.shape != out.shape[1:]:
            self._fail(f"changes frame size mid-stream ({rgb.shape[:2]} vs {(self.height, self.width)})")
        out[k] = rgb

    def _read_in_order(self, container: Any, stream: Any, wanted: np.ndarray, out: np.ndarray) -> None:
        """No usable timestamps: decode from the start and pick frames by their position."""
        j = 0
        for k, frame in enumerate(container.decode(stream)):
            self._count()
            if k == wanted[j]:
                self._put_rgb(frame, out, j)
                j += 1
                if j == len(wanted):
                    return
        self._fail(f"is truncated: frame {int(wanted[j])} of {self.num_frames} could not be decoded")

    def _read_seeking(self, container: Any, stream: Any, wanted: np.ndarray, out: np.ndarray) -> None:
        """Each wanted frame from the keyframe at or before it, seeking only when that keyframe is ahead."""
        targets = self._pts[wanted]
        slot = {int(p): j for j, p in enumerate(targets)}
        done = np.zeros(len(wanted), bool)
        decoder = None
        last = None  # pts of the last decoded frame of the current forward run
        for j, target in enumerate(targets.tolist()):
            if done[j]:
                continue
            key = self._keyframe_before(target)
            if decoder is None or last is None or key > last:
                decoder, last = self._seek(container, stream, key, target), None
            for frame in decoder:
                self._count()
                pts = last = frame.pts
                k = slot.get(pts)
                if k is not None and not done[k]:
                    self._put_rgb(frame, out, k)
                    done[k] = True
                if pts is not None and pts >= target:
                    break
            else:
                decoder = None
            if not done[j]:
                frame_no = int(wanted[j])
                self._fail(f"is truncated or corrupt: frame {frame_no} of {self.num_frames} could not be decoded")

    def _keyframe_before(self, target: int) -> int:
        k = int(np.searchsorted(self._keyframe_pts, target, side="right")) - 1
        return int(self._keyframe_pts[k]) if k >= 0 else int(self._pts[0])

    def _seek(self, container: Any, stream: Any, key: int, target: int) -> Any:
        """A decoder positioned at the keyframe ``key``; from the start if the seek lands past ``target``."""
        container.seek(key, stream=stream, backward=True, any_frame=False)
        decoder = container.decode(stream)
        first = next(decoder, None)
        if first is not None and first.pts is not None and first.pts <= target:
            return _chain(first, decoder)
        if first is not None:
            self._count()  # decoded but past the target: wasted
        container.seek(int(self._pts[0]), stream=stream, backward=True, any_frame=False)
        return container.decode(stream)


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """The video stream's declared length in seconds, or the container's when it holds no other stream."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None
