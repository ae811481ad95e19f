"""ArrayRecord: the binary record encoding of raw / decoded samples, the writer and the source.

A record is   b"VLJ1" | uint32 little-endian header length | UTF-8 JSON header | binary payload.
The JSON header is the raw sample, where every bytes value (encoded images, video files) is replaced
by {"$blob": [offset, length]} into the payload, and every numpy array by
{"$ndarray": [offset, length], "dtype": str, "shape": [...]}. Images given as arrays are stored
PNG-encoded (lossless; or JPEG by `image_format`), image files are stored as their original bytes,
and video frame arrays as one encoded image per frame. Plain JSON records (starting with "{", bytes
as {"$b64": base64}) are read as well, for hand-written data.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vlm_jax.data.sources.errors import SampleError
from vlm_jax.data.sources.messages import stamp_source
from vlm_jax.data.sources.refs import expand_paths, frame_files, resolve_video

RECORD_MAGIC = b"VLJ1"


def encode_image(image: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """uint8 [H, W, 3] (or [H, W]) -> PNG / JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image))
    if image_format.lower() in ("jpg", "jpeg"):
        pil.save(buf, format="JPEG", quality=quality)
    else:
        pil.save(buf, format=image_format.upper())
    return buf.getvalue()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SampleError("missing_file", f"file {path!r} does not exist") from None


def _pack_visuals(sample: Mapping, image_format: str) -> dict:
    """Replace image / video references by bytes (files read, arrays encoded)."""
    out = dict(sample)
    images = []
    for ref in sample.get("images", []) or []:
        if isinstance(ref, np.ndarray):
            ref = encode_image(ref, image_format)
        elif isinstance(ref, str):
            ref = _read_file(ref)
        images.append(ref)
    videos = []
    for v in sample.get("videos", []) or []:
        v = resolve_video(v, None)
        frames = v["frames"]
        if isinstance(frames, np.ndarray):
            frames = [encode_image(f, image_format) for f in frames]
        elif isinstance(frames, (list, tuple)):
            frames = [
                encode_image(f, image_format)
                if isinstance(f, np.ndarray)
                else _read_file(f)
                if isinstance(f, str)
                else f
                for f in frames
            ]
        elif isinstance(frames, str):
            if os.path.isdir(frames):
                frames = [_read_file(p) for p in frame_files(frames)]
            elif frames.endswith(".npy"):
                frames = [encode_image(f, image_format) for f in np.load(frames)]
            else:
                frames = {"$video_file": _read_file(frames), "ext": os.path.splitext(frames)[1]}
        videos.append({"frames": frames, "fps": v["fps"]})
    if "images" in sample:
        out["images"] = images
    if "videos" in sample:
        out["videos"] = videos
    return out


def encode_record(sample: Mapping, image_format: str = "png") -> bytes:
    """Serialise a raw or decoded sample (images as arrays, bytes or paths) to one record."""
    payload = bytearray()

    def enc(x):
        if isinstance(x, (bytes, bytearray, memoryview)):
            off = len(payload)
            payload.extend(x)
            return {"$blob": [off, len(x)]}
        if isinstance(x, np.ndarray):
            off = len(payload)
            data = np.ascontiguousarray(x).tobytes()
            payload.extend(data)
            return {"$ndarray": [off, len(data)], "dtype": x.dtype.str, "shape": list(x.shape)}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, Mapping):
            return {str(k): enc(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        return x

    header = json.dumps(enc(_pack_visuals(sample, image_format)), ensure_ascii=False).encode("utf-8")
    return RECORD_MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)


def decode_record(record: bytes) -> dict:
    """Inverse of ``encode_record`` (images come back as encoded bytes); also reads plain JSON records."""
    record = bytes(record)
    if record[:4] == RECORD_MAGIC:
        (n,) = struct.unpack("<I", record[4:8])
        header = json.loads(record[8 : 8 + n].decode("utf-8"))
        payload = memoryview(record)[8 + n :]
    elif record.lstrip()[:1] == b"{":
        header, payload = json.loads(record.decode("utf-8")), memoryview(b"")
    else:
        raise SampleError("bad_format", "record is neither a VLJ1 record nor JSON")

    def dec(x):
        if isinstance(x, dict):
            if "$blob" in x and len(x) == 1:
                off, length = x["$blob"]
                return bytes(payload[off : off + length])
            if "$b64" in x and len(x) == 1:
                return base64.b64decode(x["$b64"])
            if "$ndarray" in x:
                off, length = x["$ndarray"]
                return np.frombuffer(payload[off : off + length], dtype=np.dtype(x["dtype"])).reshape(
                    x["shape"]
                )
            return {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        return x

    return dec(header)


def write_array_record(
    samples: Iterable[Mapping], path: str | os.PathLike, image_format: str = "png", group_size: int = 1
) -> int:
    """Writes samples (raw or decoded; image paths are read, arrays encoded) to one ArrayRecord file.

    ``group_size=1`` keeps random access cheap (one record per chunk), as grain recommends.
    Returns the number of records written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(os.fspath(path), f"group_size:{group_size}")
    n = 0
    try:
        for sample in samples:
            writer.write(encode_record(sample, image_format))
            n += 1
    finally:
        writer.close()
    return n


class ArrayRecordSource:
    """Random access over ArrayRecord files of ``encode_record`` records."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], name: str | None = None):
        import grain

        self.paths = expand_paths(paths)
        self.name = name or os.path.splitext(os.path.basename(self.paths[0]))[0]
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        try:
            sample = decode_record(self._source[index])
        except SampleError as e:
            raise SampleError(e.reason, f"{self.name} record {index}: {e.detail}") from e
        except Exception as e:
            raise SampleError("bad_format", f"{self.name} record {index}: cannot decode ({e})") from e
        return stamp_source(sample, self.name, index)

    def __repr__(self) -> str:
        return f"ArrayRecordSource(name={self.name!r}, files={len(self.paths)}, len={len(self)})"
