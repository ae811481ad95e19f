"""Qwen3-VL chat rendering (ChatML), vision placeholder expansion and the SFT loss mask.

Two official templates are reproduced in plain Python, character for character:
- "standard": the Qwen3-VL *Instruct* chat template. An assistant turn is its text only; a
  "reasoning" field is ignored, and no empty `<think>` block is written.
- "thinking": the Qwen3-VL *Thinking* chat template. Assistant turns after the last real user query
  are rendered `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` (the final turn always, even with empty
  reasoning); earlier turns lose their reasoning, and the generation prompt ends with `<think>\\n`.
- "thinking_all_turns" (ours, for multi-turn chain-of-thought SFT): every assistant turn rendered like
  the final one of "thinking".

Messages: `{"role": "system"|"user"|"assistant"|"tool", "content": str | [items]}`, items
`{"type": "text", "text": ...}`, `{"type": "image"}`, `{"type": "video"}` (an "image"/"image_url"/
"video" key also marks a vision item, as in the templates). Assistant messages may carry "reasoning"
(or "reasoning_content"/"thinking", Hugging Face's aliases) and "tool_calls".

Vision expansion follows `Qwen3VLProcessor` as released with Qwen3-VL (transformers 4.57): each
`<|image_pad|>` becomes t*h*w/merge**2 pads; each `<|vision_start|><|video_pad|><|vision_end|>` becomes,
per temporal group, `<timestamp><|vision_start|>` + h*w/merge**2 `<|video_pad|>` + `<|vision_end|>`.
(transformers 5.x replaces only the `<|video_pad|>`, leaving an extra outer vision_start/vision_end
around the groups; we keep the released behaviour, which docs/CONTRACTS.md specifies.)
With `video_time_encoding="absolute_time"` (the Qwen2.5-VL ablation) a video is expanded as Qwen2.5-VL's
processor does: `<|vision_start|>` + t*h*w/merge**2 `<|video_pad|>` + `<|vision_end|>`, no timestamps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import numpy as np

from vlm_jax.data.processor import TIMESTAMP_FORMATS, VIDEO_TIME_ENCODINGS, format_timestamp
from vlm_jax.data.tokenizer import Tokenizer

THINKING_FORMATS = ("standard", "thinking", "thinking_all_turns")
ROLES = ("system", "user", "assistant", "tool")

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
_IMAGE_PAD = "<|image_pad|>"
_VIDEO_PAD = "<|video_pad|>"
# A video is its whole placeholder (what the template writes) or, failing that, a bare pad;
# an image is its pad token (the template's vision_start/vision_end stay around the expansion).
_VISION_RE = re.compile("(" + re.escape(VIDEO_PLACEHOLDER) + "|" + re.escape(_VIDEO_PAD) + "|"
                        + re.escape(_IMAGE_PAD) + ")")

_TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                 "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and "
                 "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                 '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # HF's aliases, in its priority order


def _thinking_format(thinking: bool | str | None) -> str:
    if thinking is True:
        return "thinking"
    if thinking is False or thinking is None:
        return "standard"
    if thinking not in THINKING_FORMATS:
        raise ValueError(f"thinking must be a bool or one of {THINKING_FORMATS}, got {thinking!r}")
    return thinking


def _tojson(x) -> str:
    return json.dumps(x, ensure_ascii=False)  # the `tojson` filter Hugging Face gives chat templates


def _validate(messages: Sequence[Mapping]) -> None:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, Mapping) else type(m).__name__
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {role!r}")
        content = m.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, Sequence) or not all(isinstance(c, Mapping) for c in content):
            raise ValueError(f"message {i}: content must be a string or a list of dicts, got {content!r}")


def _vision_kind(item: Mapping) -> str | None:
    # The templates' tests: `type == 'image' or 'image' in item or 'image_url' in item`, then video.
    if item.get("type") == "image" or "image" in item or "image_url" in item:
        return "image"
    if item.get("type") == "video" or "video" in item:
        return "video"
    return None


class _Renderer:
    """Renders one conversation into pieces (text, trained) exactly as the official template."""

    def __init__(self, add_vision_id: bool):
        self.add_vision_id = add_vision_id
        self.images = 0
        self.videos = 0
        self.pieces: list[tuple[str, bool]] = []

    def emit(self, text: str, trained: bool = False) -> None:
        if text:
            self.pieces.append((text, trained))

    def vision(self, kind: str, count: bool) -> str:
        if kind == "image":
            self.images += count
            prefix = f"Picture {self.images}: " if self.add_vision_id else ""
            return prefix + IMAGE_PLACEHOLDER
        self.videos += count
        prefix = f"Video {self.videos}: " if self.add_vision_id else ""
        return prefix + VIDEO_PLACEHOLDER

    def content(self, content, count: bool = True, vision: bool = True) -> str:
        """A message's content as text: text items, and vision placeholders when `vision`."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        out = []
        for item in content:
            kind = _vision_kind(item) if vision else None
            if kind is not None:
                out.append(self.vision(kind, count))
            elif "text" in item:
                out.append(str(item["text"]))
        return "".join(out)

    def tool_calls(self, message: Mapping, content_truthy: bool) -> str:
        out = []
        for k, call in enumerate(message.get("tool_calls") or ()):
            if (k == 0 and content_truthy) or k > 0:
                out.append("\n")
            if call.get("function"):
                call = call["function"]
            args = call.get("arguments")
            args = args if isinstance(args, str) else _tojson(args)
            out.append('<tool_call>\n{"name": "' + str(call.get("name")) + '", "arguments": ' + args
                       + "}\n</tool_call>")
        return "".join(out)

    def system_and_tools(self, messages, tools, system_text: str | None) -> None:
        if tools:
            text = "<|im_start|>system\n"
            if system_text is not None:
                text += system_text + "\n\n"
            text += _TOOLS_HEADER + "".join("\n" + _tojson(t) for t in tools) + _TOOLS_FOOTER
            self.emit(text)
        elif system_text is not None:
            self.emit("<|im_start|>system\n" + system_text + "<|im_end|>\n")

    def tool_message(self, messages, i: int, text: str) -> None:
        if i == 0 or messages[i - 1]["role"] != "tool":
            self.emit("<|im_start|>user")
        self.emit("\n<tool_response>\n" + text + "\n</tool_response>")
        if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
            self.emit("<|im_end|>\n")

    def assistant(self, body: str) -> None:
        # The header is prompt; the response and its <|im_end|> are trained; the newline after is not.
        self.emit("<|im_start|>assistant\n")
        self.emit(body + "<|im_end|>", trained=True)
        self.emit("\n")

    def instruct(self, messages, tools) -> None:
        first_system = messages[0]["role"] == "system"
        # The Instruct template keeps only the text of the system prompt.
        system = self.content(messages[0].get("content"), vision=False) if first_system else None
        self.system_and_tools(messages, tools, system)
        for i, m in enumerate(messages):
            role = m["role"]
            if role == "user":
                self.emit("<|im_start|>user\n" + self.content(m.get("content")) + "<|im_end|>\n")
            elif role == "assistant":
                text = self.content(m.get("content"), vision=False)
                self.assistant(text + self.tool_calls(m, bool(m.get("content"))))
            elif role == "tool":
                self.tool_message(messages, i, self.content(m.get("content")))
            # A system message after the first is dropped by the Instruct template.

    def thinking(self, messages, tools, all_turns: bool) -> None:
        first_system = messages[0]["role"] == "system"
        self.system_and_tools(messages, tools,
                              self.content(messages[0].get("content"), count=False) if first_system else None)
        # The last user message that is not only a tool response ends the "query"; assistant turns
        # after it keep their reasoning.
        last_query = len(messages) - 1
        for index in range(len(messages) - 1, -1, -1):
            m = messages[index]
            if m["role"] == "user":
                text = self.content(m.get("content"), count=False)
                if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                    last_query = index
                    break
        for i, m in enumerate(messages):
            content = self.content(m.get("content"))  # counts vision items of every message, as the template
            role = m["role"]
            if role == "user" or (role == "system" and i > 0):
                self.emit(f"<|im_start|>{role}\n" + content + "<|im_end|>\n")
            elif role == "assistant":
                reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
                if not isinstance(reasoning, str):
                    reasoning = ""
                    if "</think>" in content:
                        head = content.split("</think>")[0]
                        reasoning = head.rstrip("\n").split("<think>")[-1].lstrip("\n")
                        content = content.split("</think>")[-1].lstrip("\n")
                last = i == len(messages) - 1
                if (all_turns or i > last_query) and (last or reasoning or all_turns):
                    body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
                else:
                    body = content
                self.assistant(body + self.tool_calls(m, bool(content)))
            elif role == "tool":
                self.tool_message(messages, i, content)


def _render_pieces(messages, add_generation_prompt, thinking, tools, add_vision_id) -> list[tuple[str, bool]]:
    fmt = _thinking_format(thinking)
    _validate(messages)
    r = _Renderer(add_vision_id)
    if fmt == "standard":
        r.instruct(messages, tools)
    else:
        r.thinking(messages, tools, all_turns=fmt == "thinking_all_turns")
    if add_generation_prompt:
        r.emit("<|im_start|>assistant\n" + ("" if fmt == "standard" else "<think>\n"))
    return r.pieces


def render_text(messages: Sequence[Mapping], add_generation_prompt: bool = False,
                thinking: bool | str | None = False, tools: Sequence[Mapping] | None = None,
                add_vision_id: bool = False) -> str:
    """The conversation as the official Qwen3-VL template renders it (one placeholder per image/video).

    `thinking`: False/None/"standard" (Instruct template), True/"thinking" (Thinking template) or
    "thinking_all_turns". `tools` (JSON schemas) and `add_vision_id` ("Picture 1: ") as in the templates.
    """
    return "".join(text for text, _ in _render_pieces(messages, add_generation_prompt, thinking, tools,
                                                         add_vision_id))


def _describe(messages, sample_id) -> str:
    if sample_id is not None:
        return f"sample {sample_id!r}"
    for m in messages:
        if m.get("role") == "user":
            text = _Renderer(False).content(m.get("content"), vision=False)
            return f"sample starting {text[:40]!r}"
    return "sample"


def tokenize_conversation(
    messages: Sequence[Mapping],
    tokenizer: Tokenizer,
    image_grids: Sequence[Sequence[int]] | np.ndarray = (),
    video_grids: Sequence[Sequence[int]] | np.ndarray = (),
    video_timestamps: Sequence[Sequence[float]] = (),
    thinking: bool | str | None = False,
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping] | None = None,
    add_vision_id: bool = False,
    merge_size: int = 2,
    timestamp_format: str = "seconds",
    rng: np.random.Generator | None = None,
    sample_id: str | None = None,
    video_time_encoding: str = "timestamps",
) -> dict:
    """Render, expand vision placeholders and tokenize -> dict(input_ids int32 [L], loss_mask bool [L]).

    `image_grids[i]` / `video_grids[j]` are the (t, h, w) patch grids of the i-th image / j-th video
    placeholder in rendering order; `video_timestamps[j]` has one time (seconds) per temporal group.
    `timestamp_format`: "seconds" (`<3.0 seconds>`), "hms" (`<00:00:03>`) or "random" (one of the two
    per video, drawn from `rng`). The text is tokenized as one string, as Hugging Face's processor does.
    `video_time_encoding="absolute_time"`: each video is one block without timestamps (module docstring);
    `video_timestamps` is then not used and may be empty.

    `loss_mask` is True on the tokens of each assistant response, from the first token after
    "<|im_start|>assistant\\n" through its "<|im_end|>" (reasoning and tool calls included), and False on
    everything else: system, user, tool turns, turn headers, the newline after "<|im_end|>", the
    generation prompt and all vision tokens. A token that straddles a boundary is trained if any of its
    characters is. (Qwen's qwen-vl-finetune also trains the newline after "<|im_end|>"; we train the
    response and its end-of-turn token only.) A count mismatch between placeholders and grids raises
    ValueError naming both counts and the sample (`sample_id`, else the start of the first user message).
    """
    if timestamp_format not in TIMESTAMP_FORMATS:
        raise ValueError(f"timestamp_format must be one of {TIMESTAMP_FORMATS}, got {timestamp_format!r}")
    if video_time_encoding not in VIDEO_TIME_ENCODINGS:
        raise ValueError(f"video_time_encoding must be one of {VIDEO_TIME_ENCODINGS}, got {video_time_encoding!r}")
    stamped = video_time_encoding == "timestamps"
    pieces = _render_pieces(messages, add_generation_prompt, thinking, tools, add_vision_id)
    where = _describe(messages, sample_id)
    n_img = sum(_VISION_RE.findall(t).count(_IMAGE_PAD) for t, _ in pieces)
    n_vid = sum(len(_VISION_RE.findall(t)) for t, _ in pieces) - n_img
    # Accept (t, h, w) triples, [M, 3] arrays, or the [1, 3] `grid_thw` of each processor output.
    image_grids = [tuple(int(v) for v in np.asarray(g).reshape(-1)) for g in image_grids]
    video_grids = [tuple(int(v) for v in np.asarray(g).reshape(-1)) for g in video_grids]
    for kind, grids in (("image", image_grids), ("video", video_grids)):
        for i, g in enumerate(grids):
            if len(g) != 3:
                raise ValueError(f"{where}: {kind} grid {i} must be (t, h, w), got {g}")
    if n_img != len(image_grids):
        raise ValueError(f"{where}: the conversation has {n_img} image placeholders but {len(image_grids)} "
                         "image grids were given")
    if n_vid != len(video_grids):
        raise ValueError(f"{where}: the conversation has {n_vid} video placeholders but {len(video_grids)} "
                         "video grids were given")
    if stamped and len(video_timestamps) != len(video_grids):
        raise ValueError(f"{where}: {len(video_grids)} video grids but {len(video_timestamps)} "
                         "timestamp lists")
    merge = merge_size**2
    for kind, grids in (("image", image_grids), ("video", video_grids)):
        for i, (t, h, w) in enumerate(grids):
            if min(t, h, w) <= 0 or h % merge_size or w % merge_size:
                raise ValueError(f"{where}: {kind} {i} has grid (t={t}, h={h}, w={w}); t, h, w must be "
                                 f"positive and h, w multiples of merge_size={merge_size}")
    for j, ((t, _, _), ts) in enumerate(zip(video_grids, video_timestamps if stamped else ())):
        if len(ts) != t:
            raise ValueError(f"{where}: video {j} has {t} temporal groups but {len(ts)} timestamps")

    # Videos are expanded in the text: their timestamps are text the tokenizer must see in context, as
    # Hugging Face tokenizes them. Each image and each video group keeps a single pad token here; pads are
    # added tokens (tokenized alone), so they are widened to their full count after tokenization.
    rng = rng if rng is not None else np.random.default_rng()
    texts: list[str] = []
    trained: list[bool] = []
    pad_counts: list[int] = []
    n_images = n_videos = 0
    for text, is_trained in pieces:
        for k, part in enumerate(_VISION_RE.split(text)):
            if k % 2 == 0:
                if part:
                    texts.append(part)
                    trained.append(is_trained)
            elif part == _IMAGE_PAD:
                t, h, w = image_grids[n_images]
                n_images += 1
                texts.append(part)
                trained.append(False)
                pad_counts.append(t * h * w // merge)
            elif not stamped:  # Qwen2.5-VL: the whole video in one block, time only in its position ids
                t, h, w = video_grids[n_videos]
                n_videos += 1
                texts.append(part)  # the placeholder as written: only its pad widens, as Qwen2.5-VL's processor
                trained.append(False)
                pad_counts.append(t * h * w // merge)
            else:
                t, h, w = video_grids[n_videos]
                stamps = video_timestamps[n_videos]
                n_videos += 1
                fmt = timestamp_format
                if fmt == "random":  # one format per video, so its groups read consistently
                    fmt = "seconds" if rng.random() < 0.5 else "hms"
                for g in range(t):
                    texts.append(format_timestamp(float(stamps[g]), fmt) + "<|vision_start|>" + _VIDEO_PAD
                                 + "<|vision_end|>")
                    trained.append(False)
                    pad_counts.append(h * w // merge)

    full = "".join(texts)
    char_trained = np.repeat(np.array(trained, bool), [len(t) for t in texts])
    ids, offsets = tokenizer.encode_with_offsets(full)
    ids = np.asarray(ids, np.int64)
    cum = np.concatenate([[0], np.cumsum(char_trained, dtype=np.int64)])
    starts = np.array([o[0] for o in offsets], np.int64).reshape(-1)
    ends = np.array([o[1] for o in offsets], np.int64).reshape(-1)
    token_trained = cum[ends] - cum[starts] > 0
    # A token reported with an empty span (offset trimming) takes the flag of the character it sits on.
    empty = ends <= starts
    if len(full):
        token_trained[empty] = char_trained[np.minimum(starts[empty], len(full) - 1)]

    sp = tokenizer.special_ids
    vision_ids = [sp["vision_start"], sp["vision_end"], sp["image_pad"], sp["video_pad"]]
    token_trained[np.isin(ids, vision_ids)] = False
    is_pad = np.isin(ids, [sp["image_pad"], sp["video_pad"]])
    if int(is_pad.sum()) != len(pad_counts):
        raise ValueError(f"{where}: the tokenizer produced {int(is_pad.sum())} vision pad tokens for "
                         f"{len(pad_counts)} placeholders; are the pads added tokens?")
    repeats = np.ones(len(ids), np.int64)
    repeats[is_pad] = pad_counts
    return {
        "input_ids": np.repeat(ids, repeats).astype(np.int32),
        "loss_mask": np.repeat(token_trained, repeats),
    }
