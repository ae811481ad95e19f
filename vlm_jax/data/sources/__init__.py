"""Random-access data sources of raw vision-language samples, and their decoding.

Every source follows grain's ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``)
and returns a *raw sample*: the internal sample form of ``vlm_jax.data.synthetic`` with the
visual inputs not yet decoded::

    {"id": str, "task": str, "source": str,
     "messages": [{"role": "system"|"user"|"assistant"|"tool",
                   "content": str | [{"type": "text", "text": str} | {"type": "image"} | {"type": "video"}],
                   "reasoning": str (assistant, optional)}, ...],
     "images": [ImageRef, ...],          # in the order of the {"type": "image"} items
     "videos": [VideoRef, ...]}          # in the order of the {"type": "video"} items

or, for plain-text (pre-training style) data, ``{"id", "task", "source", "text": str}``.

An ``ImageRef`` is a uint8 array [H, W, 3], encoded image bytes, or a file path.
A ``VideoRef`` is ``{"frames": uint8 [T, H, W, 3] | [ImageRef, ...] | path | bytes, "fps": float | None}``
(a bare path, frame list or array is accepted too). ``decode_sample`` turns a raw sample into a
decoded one (images uint8 [H, W, 3], videos ``{"frames": uint8 [T, H, W, 3], "fps": float}``); a video
file (mp4, webm, mov, avi, mkv, ...) becomes a ``VideoFile``, a lazy array of that shape of which the
processor decodes only the frames it samples.

Sources (one module per kind; this package re-exports the public names):
- ``QwenJsonlSource``: the official Qwen-VL fine-tuning format, ``.json`` arrays (packed lists too) or
  ``.jsonl`` (``{"image": "a.png" | [...], "video": ..., "conversations": [{"from": "human", "value":
  "<image>..."}]}``); ``qwen_sources`` / ``qwen_mixture`` build them from an official-style registry and
  ``name%N`` dataset names (``registry``).
- ``MessagesJsonlSource``: OpenAI / Hugging Face style ``{"messages": [...]}`` records, or ``{"text": ...}``.
- ``ArrayRecordSource`` (+ ``write_array_record``): the binary record encoding defined below.
- ``TFDSSource``: any TFDS dataset prepared in ``array_record`` format, via ``tfds.data_source``.
- ``MixtureSource``: a deterministic weighted mixture of sources.

Modules: ``errors`` (``SampleError``, ``SKIP_REASONS``), ``refs`` (paths, URLs, video references),
``messages`` (records -> internal messages), ``json_array`` (record offsets of JSON array files),
``jsonl``, ``arrayrecord``, ``tfds``, ``mixture``, ``registry`` (the sources), ``video`` (video files)
and ``decode`` (raw -> decoded samples).

Errors on a sample raise ``SampleError`` (a ``reason`` from ``SKIP_REASONS`` and a message naming
the file / line / path); the pipeline turns them into skip-and-count or a hard error (``on_error``).
"""

from vlm_jax.data.sources.arrayrecord import (
    RECORD_MAGIC,
    ArrayRecordSource,
    decode_record,
    encode_image,
    encode_record,
    write_array_record,
)
from vlm_jax.data.sources.decode import decode_image, decode_sample, decode_video
from vlm_jax.data.sources.errors import SKIP_REASONS, SampleError
from vlm_jax.data.sources.json_array import array_index
from vlm_jax.data.sources.jsonl import MessagesJsonlSource, QwenJsonlSource, record_index
from vlm_jax.data.sources.messages import count_visuals, messages_record_to_sample, qwen_record_to_sample
from vlm_jax.data.sources.mixture import MixtureSource
from vlm_jax.data.sources.refs import IMAGE_EXTENSIONS
from vlm_jax.data.sources.registry import parse_dataset_name, qwen_mixture, qwen_sources
from vlm_jax.data.sources.tfds import TFDSSource, tfds_example_to_sample
from vlm_jax.data.sources.video import VIDEO_EXTENSIONS, VideoFile

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECORD_MAGIC",
    "SKIP_REASONS",
    "ArrayRecordSource",
    "MessagesJsonlSource",
    "MixtureSource",
    "QwenJsonlSource",
    "SampleError",
    "TFDSSource",
    "VIDEO_EXTENSIONS",
    "VideoFile",
    "array_index",
    "count_visuals",
    "decode_image",
    "decode_record",
    "decode_sample",
    "decode_video",
    "encode_image",
    "encode_record",
    "messages_record_to_sample",
    "parse_dataset_name",
    "qwen_mixture",
    "qwen_record_to_sample",
    "qwen_sources",
    "record_index",
    "tfds_example_to_sample",
    "write_array_record",
]
