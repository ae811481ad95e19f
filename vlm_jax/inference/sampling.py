"""Token sampling: pure functions of (logits, state, PRNG key), usable inside `jit`.

Each processor works on float32 logits `[B, V]` and matches its reference:

- `apply_repetition_penalty`: Hugging Face `RepetitionPenaltyLogitsProcessor` (and vLLM's
  `repetition_penalty`): for every token seen in the prompt or the generated text, positive
  logits are divided by the penalty, negative (and zero) ones multiplied. We count only the
  real prompt tokens of a row; HF's `input_ids` also holds left-padding ids (a difference
  only when the pad id is a real token that gets penalised).
- `apply_presence_penalty`: vLLM / OpenAI `presence_penalty`: subtract the penalty from the
  logits of tokens that appeared in the *generated* text (not the prompt). Qwen's official
  evaluation runs on vLLM with `presence_penalty=1.5` for Instruct models; HF has no such
  processor, so vLLM's `apply_penalties` is the reference.
- `apply_temperature`, `apply_top_k`, `apply_top_p`, `apply_min_p`: HF's
  `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`
  (with `min_tokens_to_keep=1`; removed logits become -inf).

`process_logits` chains them in HF's (and vLLM's) order: penalties on the raw logits, then
temperature, top-k, top-p, min-p. `sample` draws a token (argmax when temperature is 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vlm_jax.configs.validate import check_keys

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding hyper-parameters. Frozen and hashable: it is a static argument of the jitted steps
    (hence a dataclass, not a ConfigDict); `replace` checks its keys with `configs.validate`.

    temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 and min_p 0.0 disable those filters;
    presence_penalty 0.0 and repetition_penalty 1.0 disable the penalties.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 32768

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1.0 disables it)"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {msg} (got {self})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_prompt_tokens(self) -> bool:
        """Whether the per-row set of prompt tokens must be tracked (repetition penalty)."""
        return self.repetition_penalty != 1.0

    @property
    def uses_generated_tokens(self) -> bool:
        """Whether the per-row set of generated tokens must be tracked (either penalty)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0

    def replace(self, **overrides: Any) -> SamplingConfig:
        """A copy with `overrides`; an unknown key fails naming it."""
        check_keys(overrides, dataclasses.asdict(self), "sampling", partial=True)
        return dataclasses.replace(self, **overrides)


# Qwen3-VL's official evaluation settings (DIGEST section 2); repetition penalty 1.0 for all.
PRESETS: dict[str, SamplingConfig] = {
    "instruct": SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5,
                               max_new_tokens=32768),
    "thinking": SamplingConfig(temperature=1.0, top_p=0.95, top_k=20, presence_penalty=0.0,
                               max_new_tokens=40960),
    "greedy": SamplingConfig(temperature=0.0, top_p=1.0, top_k=0, presence_penalty=0.0, max_new_tokens=32768),
}


def get_preset(name: str, **overrides: Any) -> SamplingConfig:
    """The named preset with `overrides` (None values are ignored); unknown names or keys raise ValueError."""
    if name not in PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- processors


def apply_repetition_penalty(logits: jnp.ndarray, seen: jnp.ndarray, penalty: float) -> jnp.ndarray:
    """HF RepetitionPenaltyLogitsProcessor: seen [B, V] bool marks prompt + generated tokens."""
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def apply_presence_penalty(logits: jnp.ndarray, generated: jnp.ndarray, penalty: float) -> jnp.ndarray:
    """vLLM/OpenAI presence penalty: generated [B, V] bool marks tokens already generated."""
    return logits - penalty * generated.astype(logits.dtype)


def apply_temperature(logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
    return logits / temperature


def apply_top_k(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Keep logits >= the k-th largest (ties at the k-th value are all kept, as in HF)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def _top_p_keep_sorted_ascending(sorted_logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """HF's rule on ascending-sorted logits: drop where the cumulative probability <= 1 - p,
    always keeping the largest."""
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    keep = cum > (1.0 - p)
    return keep.at[..., -1].set(True)


def apply_top_p(logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """HF TopPLogitsWarper (full sort of the vocabulary)."""
    order = jnp.argsort(logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    keep_sorted = _top_p_keep_sorted_ascending(sorted_logits, p)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, NEG_INF)


def apply_min_p(logits: jnp.ndarray, min_p: float) -> jnp.ndarray:
    """HF MinPLogitsWarper: drop tokens whose probability < min_p * the top probability."""
    probs = jax.nn.softmax(logits, axis=-1)
    remove = probs < min_p * jnp.max(probs, axis=-1, keepdims=True)
    remove = remove & (logits < jnp.max(logits, axis=-1, keepdims=True))  # always keep the top token
    return jnp.where(remove, NEG_INF, logits)


def apply_top_k_then_top_p(logits: jnp.ndarray, k: int, p: float) -> jnp.ndarray:
    """top-k followed by top-p without sorting the whole vocabulary: after top-k only the k
    candidates have non-zero probability, so HF's top-p rule can run on them alone and be turned
    back into a threshold on the full logits."""
    k = min(k, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[0]  # descending
    logits = jnp.where(logits < top[..., -1:], NEG_INF, logits)
    if p >= 1.0:
        return logits
    asc = top[..., ::-1]
    keep = _top_p_keep_sorted_ascending(asc, p)
    # The smallest kept candidate value is the threshold (ties with it are kept too).
    cut = jnp.min(jnp.where(keep, asc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cut, NEG_INF, logits)


def process_logits(logits: jnp.ndarray, cfg: SamplingConfig, prompt_seen: jnp.ndarray | None = None,
                   generated: jnp.ndarray | None = None) -> jnp.ndarray:
    """Penalties, temperature, top-k, top-p, min-p in the reference order; float32 [B, V] out.

    prompt_seen / generated: [B, V] bool sets of prompt / generated tokens (needed only by the
    penalties that are enabled in `cfg`).
    """
    logits = logits.astype(jnp.float32)
    if cfg.repetition_penalty != 1.0:
        seen = generated if prompt_seen is None else prompt_seen | generated
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.presence_penalty != 0.0:
        logits = apply_presence_penalty(logits, generated, cfg.presence_penalty)
    if cfg.greedy:
        return logits  # argmax ignores the warpers (they never remove the top token)
    if cfg.temperature != 1.0:
        logits = apply_temperature(logits, cfg.temperature)
    if cfg.top_k > 0:
        logits = apply_top_k_then_top_p(logits, cfg.top_k, cfg.top_p)
    elif cfg.top_p < 1.0:
        logits = apply_top_p(logits, cfg.top_p)
    if cfg.min_p > 0.0:
        logits = apply_min_p(logits, cfg.min_p)
    return logits


def sample(key: jax.Array, logits: jnp.ndarray, cfg: SamplingConfig, prompt_seen: jnp.ndarray | None = None,
           generated: jnp.ndarray | None = None) -> jnp.ndarray:
    """One token per row, int32 [B]: argmax when greedy, else a draw from the processed logits."""
    logits = process_logits(logits, cfg, prompt_seen, generated)
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def token_set(tokens: jnp.ndarray, vocab_size: int, valid: jnp.ndarray | None = None) -> jnp.ndarray:
    """[B, V] bool: which ids occur in each row of tokens [B, S] (where `valid`)."""
    b = tokens.shape[0]
    valid = jnp.ones(tokens.shape, bool) if valid is None else valid.astype(bool)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens.shape)
    return jnp.zeros((b, vocab_size), bool).at[rows, tokens].max(valid)
