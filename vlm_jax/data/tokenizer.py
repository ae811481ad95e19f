"""A thin wrapper over a Hugging Face `tokenizer.json` (the `tokenizers` library), with Qwen's special ids.

`load_tokenizer` reads a Qwen3-VL checkpoint directory (or any tokenizer.json holding the Qwen special
tokens, e.g. the synthetic world's) and checks that every special token the data pipeline relies on is
present and encodes to exactly one id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tokenizers

# Name in `Tokenizer.special_ids` -> token text.
QWEN_SPECIAL_TOKENS: dict[str, str] = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "image_pad": "<|image_pad|>",
    "video_pad": "<|video_pad|>",
    "think": "<think>",
    "think_end": "</think>",
    "object_ref_start": "<|object_ref_start|>",
    "object_ref_end": "<|object_ref_end|>",
    "box_start": "<|box_start|>",
    "box_end": "<|box_end|>",
    "quad_start": "<|quad_start|>",
    "quad_end": "<|quad_end|>",
    "tool_call": "<tool_call>",
    "tool_call_end": "</tool_call>",
}


class Tokenizer:
    """encode/decode plus `special_ids` (name -> id, names as in `QWEN_SPECIAL_TOKENS`)."""

    def __init__(self, tok: tokenizers.Tokenizer, source: str = "<in memory>"):
        self._tok = tok
        self.source = source
        ids, missing, split = {}, [], []
        for name, text in QWEN_SPECIAL_TOKENS.items():
            tid = tok.token_to_id(text)
            if tid is None:
                missing.append(text)
            elif tok.encode(text, add_special_tokens=False).ids != [tid]:
                split.append(text)  # in the vocabulary but not an added token: text would not map to it
            else:
                ids[name] = tid
        if missing or split:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if split:
                parts.append(f"not encoded as single tokens (add them as added tokens) {split}")
            raise ValueError(f"tokenizer {source} lacks Qwen special tokens: " + "; ".join(parts))
        self.special_ids: dict[str, int] = ids

    # Shorthands for the ids the pipeline and the model use most.
    @property
    def im_start_id(self) -> int:
        return self.special_ids["im_start"]

    @property
    def im_end_id(self) -> int:
        return self.special_ids["im_end"]

    @property
    def pad_id(self) -> int:
        """<|endoftext|>, Qwen's padding token."""
        return self.special_ids["endoftext"]

    @property
    def vision_start_id(self) -> int:
        return self.special_ids["vision_start"]

    @property
    def vision_end_id(self) -> int:
        return self.special_ids["vision_end"]

    @property
    def image_pad_id(self) -> int:
        return self.special_ids["image_pad"]

    @property
    def video_pad_id(self) -> int:
        return self.special_ids["video_pad"]

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding table may be larger)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text maps to its id, nothing is prepended or appended."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and the (start, end) character span of each token in `text`."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (special tokens kept unless `skip_special_tokens`)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self._tok.id_to_token(int(tid))

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path_or_dir: str | os.PathLike) -> Tokenizer:
    """Load a Hugging Face tokenizer.json, or the one inside a checkpoint directory."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the library raises a bare Exception for malformed JSON
        raise ValueError(f"cannot read tokenizer {path}: {e}") from e
    return Tokenizer(tok, source=path)
