"""The small byte-level BPE tokenizer of the synthetic world (built by ``data/build_tokenizer.py``).

Layout of the vocabulary (deterministic; the same file on every rebuild):

- ids 0..17: the Qwen special tokens ``SPECIAL_TOKENS`` in that order (``<|endoftext|>`` = 0 is
  also the padding token). ``<tool_call>``, ``</tool_call>``, ``<think>``, ``</think>`` are added
  with ``special=False`` as in Qwen3 (kept by ``decode(..., skip_special_tokens=True)``, so a reply's
  thinking block survives decoding); the others are ``special=True``.
- ids 18..273: the 256 byte symbols of the GPT-2/Qwen byte-level alphabet, in byte order.
- then the BPE merges learnt on text of the default world (questions, answers, JSON, reasoning) and
  chat-template text, in merge order.

Pre-tokenisation is Qwen2's regex (so every digit is its own token) followed by byte-level mapping;
there is no normaliser, so any string encodes and decodes losslessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
)
SPECIAL_IDS: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
NOT_SPECIAL = frozenset({"<tool_call>", "</tool_call>", "<think>", "</think>"})

# Qwen2 / Qwen3 pre-tokenizer pattern (digits split one by one).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

DEFAULT_VOCAB_SIZE = 1024  # total (specials + bytes + merges); the corpus saturates above, so exact
DEFAULT_SAMPLES_PER_TASK = 200

ASSET_PATH = Path(__file__).resolve().parents[2] / "assets" / "synthetic_tokenizer.json"

_TEMPLATE_TEXT = (
    "system\nYou are a helpful assistant.",
    "user\n",
    "assistant\n",
    "\n\n",
    "Picture 1: ",
    "Picture 2: ",
    "Video 1: ",
    "You are a helpful assistant. Answer the question about the image.",
    "Think step by step, then give the final answer.",
    "The answer is",
    "I think the answer is",
    "Sorry, I cannot tell from the image.",
    "Let me look at the image again.",
    '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "object"}\n]\n```',
    '{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]}}',
    "click(x=1, y=2)",
)


def _byte_alphabet() -> list[str]:
    """The 256 byte-level symbols in byte order (GPT-2 ``bytes_to_unicode``)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def training_corpus(samples_per_task: int = DEFAULT_SAMPLES_PER_TASK, seed: int = 0) -> list[str]:
    """Texts of the default world (every task, ``samples_per_task`` each) plus chat-template text."""
    from vlm_jax.data.synthetic.world import SyntheticWorld

    world = SyntheticWorld(seed=seed)
    texts: list[str] = list(_TEMPLATE_TEXT) * 20  # so that chat-template words get merges
    texts += [f"<{t / 2:.1f} seconds>" for t in range(0, 121)]
    texts += [f"<00:{t // 60:02d}:{t % 60:02d}>" for t in range(0, 120, 7)]
    for task in world.task_names:
        for i in range(samples_per_task):
            s = world.sample(i, "train", task)
            for m in s["messages"]:
                c = m["content"]
                texts.extend([c] if isinstance(c, str) else [it["text"] for it in c if it["type"] == "text"])
                if m.get("reasoning"):
                    texts.append(m["reasoning"])
                if m["role"] == "assistant":  # the reply in thinking form, too
                    texts.append(f"\n{m.get('reasoning') or ''}\n\n\n{m['content']}")
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Trains the byte-level BPE on ``texts`` and lays out the vocabulary canonically (module doc)."""
    alphabet = _byte_alphabet()
    n_fixed = len(SPECIAL_TOKENS) + len(alphabet)
    if vocab_size <= n_fixed:
        raise ValueError(f"vocab_size must exceed {n_fixed}")
    tmp = Tokenizer(models.BPE())
    tmp.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        special_tokens=[],
    )
    tmp.train_from_iterator(list(texts), trainer=trainer)
    merges = json.loads(tmp.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]

    vocab: dict[str, int] = {}
    for t in (*SPECIAL_TOKENS, *alphabet):
        vocab[t] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t not in NOT_SPECIAL]
    )
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in SPECIAL_TOKENS if t in NOT_SPECIAL]
    )
    for t, i in SPECIAL_IDS.items():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    return tok


def build_tokenizer_json(
    samples_per_task: int = DEFAULT_SAMPLES_PER_TASK, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> str:
    """The tokenizer.json text of the synthetic tokenizer (deterministic)."""
    tok = train_tokenizer(training_corpus(samples_per_task), vocab_size)
    return tok.to_str(pretty=True) + "\n"


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Loads the built synthetic tokenizer (the packaged asset by default)."""
    return Tokenizer.from_file(str(path or ASSET_PATH))
