"""Thinking-mode helpers: split `<think>...</think>answer` outputs, and the thinking budget.

Qwen3-VL Thinking models answer `<think>\\n...reasoning...\\n</think>\\n\\nanswer`; the thinking chat
template already ends the generation prompt with `<think>\\n`, so the output usually holds only
the closing tag. Evaluation takes the text after the LAST `</think>`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

THINK_START = "<think>"
THINK_END = "</think>"


def split_thinking(text: str) -> tuple[str, str]:
    """(reasoning, answer) split at the last `</think>`, both stripped.

    Without a `</think>` the whole text is the answer and the reasoning is empty: the same as
    `text.split("</think>")[-1]`, which is what the evaluation scripts take.
    """
    head, sep, tail = text.rpartition(THINK_END)
    if not sep:
        return "", text.strip()
    reasoning = head.split(THINK_START, 1)[1] if head.lstrip().startswith(THINK_START) else head
    return reasoning.strip(), tail.strip()


def answer_text(text: str) -> str:
    """The text evaluation scores: everything after the last `</think>`."""
    return split_thinking(text)[1]


def split_thinking_tokens(tokens: Sequence[int], think_end_id: int) -> tuple[list[int], list[int]]:
    """Token-level split at the last `think_end_id`: (up to and including it, after it)."""
    tokens = list(tokens)
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == think_end_id:
            return tokens[: i + 1], tokens[i + 1:]
    return [], tokens


@dataclasses.dataclass(frozen=True)
class ThinkingBudget:
    """Caps the tokens generated inside a think block.

    budget: tokens a row may generate while thinking; when it is spent, `end_tokens` (e.g. the
      ids of "\\n</think>\\n\\n") are forced one per step, then the model continues with the answer.
    end_tokens: the forced closing sequence; it must contain `end_id`.
    end_id: the `</think>` token id: generating it ends the think block (no forcing needed).
    start_id: the `<think>` token id: generating it opens a think block. A row whose prompt ends
      inside a think block (the thinking template's `<think>\\n`) starts in one.
    """

    budget: int
    end_tokens: tuple[int, ...]
    end_id: int
    start_id: int | None = None

    def __post_init__(self):
        if self.budget < 0:
            raise ValueError(f"ThinkingBudget.budget must be >= 0, got {self.budget}")
        if not self.end_tokens or self.end_id not in self.end_tokens:
            raise ValueError(f"ThinkingBudget.end_tokens {self.end_tokens} must contain end_id {self.end_id}")
        object.__setattr__(self, "end_tokens", tuple(int(t) for t in self.end_tokens))

    def prompt_in_think(self, prompt: Sequence[int]) -> bool:
        """Whether a prompt ends inside an open think block (last `<think>` after last `</think>`)."""
        if self.start_id is None:
            return False
        last = lambda tok: max((i for i, t in enumerate(prompt) if t == tok), default=-1)
        return last(self.start_id) > last(self.end_id)
