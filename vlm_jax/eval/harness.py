"""The evaluation harness: items -> prompts -> batched `generate` -> decoded replies -> scores -> report.

    items = tasks.load_items(["grounding", "counting"], split="eval")   # the whole held-out split
    report = evaluate(model_config, params, tokenizer, items, batch_size=8, max_new_tokens=64,
                      vision_off_control=True)
    baselines = trivial_baselines(["grounding", "counting"])
    print(report.table(baselines))

`predict` (generation) and `score_items` (scoring) are separate, so known replies can be scored
without a model. Every score is reported with its item count n and a 95% interval (`stats`: Wilson
for 0/1 scores, normal for continuous means). Baselines are constant replies fitted on the train
split (`trivial_baselines`); a report scores them on its own items, so the baseline column is
comparable with the model's. The vision-off control scores the same model on the same questions
with each item's image replaced by another item's of the same task (`tasks.vision_off_donors`): a
score that does not drop without the right image was not earned by looking.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections as mlc
import numpy as np
import tokenizers

from vlm_jax.data import processor as proc
from vlm_jax.data.synthetic import SyntheticWorld
from vlm_jax.data.tokenizer import Tokenizer
from vlm_jax.eval import metrics, stats
from vlm_jax.eval import tasks as tasks_lib
from vlm_jax.eval.metrics import normalize_text
from vlm_jax.eval.tasks import FAMILIES, EvalItem
from vlm_jax.inference import generate as generate_lib
from vlm_jax.inference.prompt import as_processor_config, as_tokenizer, batch_prompts, build_prompt, check_budget
from vlm_jax.inference.thinking import answer_text

# Per-item extras -> their aggregate's name in reports (means over all items, malformed ones included).
EXTRA_NAMES = {"iou": "mean_iou", "cer": "cer"}


@dataclasses.dataclass
class ItemResult:
    """One scored item: reply (decoded model output), final (the text after any `</think>`, what is
    scored), answer (the ground truth), score / malformed / extras (`metrics.Score`)."""

    id: str
    family: str
    task: str
    reply: str
    final: str
    answer: dict
    score: float
    malformed: bool
    extras: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A constant reply for every item of a family, and how it was fitted."""

    family: str
    reply: str
    description: str


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


@dataclasses.dataclass
class EvalReport:
    """Scored items (`results`, in item order) and the run's settings; aggregates per family.
    control: the vision-off control's report (the same items, images swapped), if it was run;
    seconds: wall time of the evaluation (the control's included)."""

    results: list[ItemResult]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    control: EvalReport | None = None

    def families(self) -> list[str]:
        """Families in order of first appearance."""
        return list(dict.fromkeys(r.family for r in self.results))

    def tasks(self) -> dict[str, dict[str, float]]:
        """family -> {headline metric: mean score, n, malformed (count), mean_iou / cer where present}."""
        out = {}
        for fam in self.families():
            rs = [r for r in self.results if r.family == fam]
            row: dict[str, float] = {FAMILIES[fam].metric: _mean([r.score for r in rs]), "n": len(rs),
                                     "malformed": sum(r.malformed for r in rs)}
            for key in dict.fromkeys(k for r in rs for k in r.extras):
                row[EXTRA_NAMES.get(key, key)] = _mean([r.extras.get(key, 0.0) for r in rs])
            out[fam] = row
        return out

    def estimates(self) -> dict[str, stats.Estimate]:
        """family -> the headline metric with its n and 95% interval."""
        return {fam: stats.estimate([r.score for r in self.results if r.family == fam],
                                    proportion=FAMILIES[fam].proportion) for fam in self.families()}

    def scalars(self) -> dict[str, float]:
        """Flat "family/name" -> value (headline metric, extras, malformed fraction, the vision-off
        control's headline metric), for metric logs."""
        out = {}
        for fam, row in self.tasks().items():
            for k, v in row.items():
                if k == "malformed":
                    out[f"{fam}/malformed_rate"] = v / max(row["n"], 1)
                elif k != "n":
                    out[f"{fam}/{k}"] = v
        if self.control is not None:
            for fam, est in self.control.estimates().items():
                out[f"{fam}/vision_off/{FAMILIES[fam].metric}"] = est.value
        return out

    def baseline_estimates(self, baselines: Mapping[str, Baseline]) -> dict[str, stats.Estimate]:
        """The headline metric (n, 95% interval) of each baseline's constant reply on this report's items."""
        out = {}
        for fam in self.families():
            if fam in baselines:
                rs = [r for r in self.results if r.family == fam]
                values = [tasks_lib.score_item(fam, r.answer, baselines[fam].reply).value for r in rs]
                out[fam] = stats.estimate(values, proportion=FAMILIES[fam].proportion)
        return out

    def baseline_scores(self, baselines: Mapping[str, Baseline]) -> dict[str, float]:
        """The headline metric of each baseline's constant reply on this report's items."""
        return {fam: est.value for fam, est in self.baseline_estimates(baselines).items()}

    def table(self, baselines: Mapping[str, Baseline] | None = None) -> str:
        """An aligned text table, one row per family: task, metric, n, score [95% CI], then the
        baseline and the vision-off control on the same items (when given / run), malformed, extras."""
        base = self.baseline_estimates(baselines) if baselines else {}
        control = self.control.estimates() if self.control is not None else None
        header = ["task", "metric", "n", "score [95% CI]", *(["baseline"] if baselines else []),
                  *(["vision-off"] if control is not None else []), "malformed", "extra"]
        rows = [header]
        ests = self.estimates()
        for fam, row in self.tasks().items():
            metric = FAMILIES[fam].metric
            extra = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k not in (metric, "n", "malformed"))
            cells = [fam, metric, str(row["n"]), ests[fam].format()]
            if baselines:
                cells.append(f"{base[fam].value:.3f}" if fam in base else "-")
            if control is not None:
                cells.append(f"{control[fam].value:.3f}" if fam in control else "-")
            rows.append([*cells, str(row["malformed"]), extra])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_json(self, baselines: Mapping[str, Baseline] | None = None) -> dict[str, Any]:
        """A JSON-able dict: per-task aggregates with 95% intervals ("ci95" [low, high], "interval": the
        method), baseline and vision-off scores on the same items (with theirs), settings, per-item
        predictions (and the vision-off control's under "vision_off")."""
        tasks = self.tasks()
        for fam, est in self.estimates().items():
            tasks[fam].update(ci95=[est.low, est.high], interval=est.method)
        out: dict[str, Any] = {"tasks": tasks, "settings": dict(self.settings), "seconds": round(self.seconds, 2)}
        if baselines:
            ests = self.baseline_estimates(baselines)
            for fam, est in ests.items():
                tasks[fam].update(baseline=est.value, baseline_ci95=[est.low, est.high])
            out["baselines"] = {f: {"reply": b.reply, "description": b.description,
                                    "score": ests[f].value if f in ests else None} for f, b in baselines.items()}
        if self.control is not None:
            ctrl_rows = self.control.tasks()
            for fam, est in self.control.estimates().items():
                tasks[fam].update(vision_off=est.value, vision_off_ci95=[est.low, est.high],
                                  vision_off_malformed=ctrl_rows[fam]["malformed"])
            out["vision_off"] = {"settings": dict(self.control.settings), "seconds": round(self.control.seconds, 2),
                                 "predictions": [dataclasses.asdict(r) for r in self.control.results]}
        out["predictions"] = [dataclasses.asdict(r) for r in self.results]
        return _jsonable(out)


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN / inf (an empty mean) become None, which strict JSON readers accept."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x if x is None or isinstance(x, str | int | float | bool) else str(x)


# ----------------------------------------------------------------------------- scoring


def score_items(items: Sequence[EvalItem], replies: Sequence[str], *, settings: Mapping[str, Any] | None = None,
                seconds: float = 0.0) -> EvalReport:
    """Scores `replies[i]` (decoded model text) against `items[i]`; only the text after `</think>` counts."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    results = []
    for it, reply in zip(items, replies):
        final = answer_text(reply)
        s = tasks_lib.score_item(it.family, it.answer, final)
        results.append(ItemResult(id=it.id, family=it.family, task=it.task, reply=reply, final=final,
                                  answer=dict(it.answer), score=float(s.value), malformed=bool(s.malformed),
                                  extras={k: float(v) for k, v in s.extras.items()}))
    return EvalReport(results, dict(settings or {}), seconds)


def decode_reply(tokenizer: Tokenizer, tokens: Sequence[int], stop_tokens: Sequence[int]) -> str:
    """Text of generated tokens up to (not including) the first stop token; `<think>` tags are kept."""
    toks = list(tokens)
    cut = next((i for i, t in enumerate(toks) if t in stop_tokens), len(toks))
    return tokenizer.decode(toks[:cut], skip_special_tokens=True)


def predict(model_config: mlc.ConfigDict, params: Any, tokenizer: Tokenizer | tokenizers.Tokenizer,
            items: Sequence[EvalItem], *, batch_size: int = 8, max_new_tokens: int = 64, preset: str | None = "greedy",
            thinking: bool = False, processor: proc.ProcessorConfig | Mapping | None = None, progress: bool = False,
            seed: int = 0, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Decoded replies of the model for `items`, in item order.

    Prompts are sorted by (length, patches) so a batch shares one prompt bucket; every batch has the
    same number of rows (the last is padded with copies of its last prompt), so generation compiles once
    per bucket rather than once more for the tail. on_batch(n): called after each batch with its number
    of items (a progress bar's update)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = as_tokenizer(tokenizer)
    pcfg = as_processor_config(processor)
    prompts = []
    for it in items:
        try:
            p = build_prompt(it.messages, it.images, it.videos, tok, pcfg, thinking)
            check_budget(len(p), max_new_tokens, model_config)
        except ValueError as e:
            raise ValueError(f"item {it.id!r}: {e}") from e
        prompts.append(p)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i].num_patches))
    width = min(batch_size, len(order))
    stop = (tok.im_end_id, tok.pad_id)
    replies = [""] * len(items)
    n_batches = -(-len(order) // max(width, 1))
    t0 = time.perf_counter()
    for b in range(n_batches):
        idx = order[b * width:(b + 1) * width]
        rows = [prompts[i] for i in idx]
        rows += [rows[-1]] * (width - len(rows))
        out = generate_lib.generate(model_config, params, **batch_prompts(rows), preset=preset or "greedy",
                                    max_new_tokens=max_new_tokens, stop_tokens=stop, pad_token_id=tok.pad_id,
                                    rng=seed + b)
        for i, seq in zip(idx, out.sequences()):
            replies[i] = decode_reply(tok, seq, stop)
        if on_batch is not None:
            on_batch(len(idx))
        if progress:
            print(f"eval: batch {b + 1}/{n_batches}, {min((b + 1) * width, len(order))}/{len(order)} items, "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return replies


def evaluate(model_config: mlc.ConfigDict, params: Any, tokenizer: Tokenizer | tokenizers.Tokenizer,
             items: Sequence[EvalItem], *, batch_size: int = 8, max_new_tokens: int = 64,
             preset: str | None = "greedy", thinking: bool = False,
             processor: proc.ProcessorConfig | Mapping | None = None, progress: bool = False,
             seed: int = 0, vision_off_control: bool = False) -> EvalReport:
    """Generates replies for `items` (see `predict`) and scores them (`score_items`).

    vision_off_control: also generate for `tasks.vision_off_items(items)` (each item with another
    item's images / videos of its task) and score those replies against the original answers, as
    `report.control` (its settings record each item's donor index)."""
    def run(its: Sequence[EvalItem], extra: Mapping[str, Any]) -> EvalReport:
        t0 = time.perf_counter()
        replies = predict(model_config, params, tokenizer, its, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          preset=preset, thinking=thinking, processor=processor, progress=progress, seed=seed)
        settings = {"model": model_config.get("name", ""), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                    "preset": preset or "greedy", "thinking": thinking, "seed": seed, **extra}
        return score_items(its, replies, settings=settings, seconds=time.perf_counter() - t0)

    report = run(items, {"vision_off_control": vision_off_control})
    if vision_off_control:
        donors = tasks_lib.vision_off_donors(items)
        report.control = run(tasks_lib.vision_off_items(items, donors),
                             {"donors": donors, "swapped": sum(d != k for k, d in enumerate(donors))})
        report.seconds += report.control.seconds
    return report


# ----------------------------------------------------------------------------- baselines


def _majority(values: Sequence[str]) -> str:
    return collections.Counter(values).most_common(1)[0][0]


def _fit_baseline(family: str, train: Sequence[EvalItem], n_train: int) -> Baseline:
    answers = [it.answer for it in train]
    src = f"the first {n_train} train samples of {', '.join(dict.fromkeys(it.task for it in train))}"
    if family == "counting":
        count = _majority([str(int(a["count"])) for a in answers])
        return Baseline(family, count, f"majority count of {src}")
    if family == "grounding":
        box = np.mean([a["bbox_2d"] for a in answers], axis=0).round().astype(int).tolist()
        return Baseline(family, json.dumps([{"bbox_2d": box}]), f"mean box of {src}")
    if family == "pointing":
        point = np.mean([a["point_2d"] for a in answers], axis=0).round().astype(int).tolist()
        return Baseline(family, json.dumps([{"point_2d": point}]), f"mean point of {src}")
    if family == "temporal":
        t = float(np.mean([a["time"] for a in answers]))
        return Baseline(family, f"{t:.1f}", f"mean event time of {src}")
    if family == "multiple_choice":
        reply = _majority([normalize_text(str(a["options"][metrics.choice_index(
            a.get("choice", a.get("text")), a["options"])])) for a in answers])
        return Baseline(family, reply, f"majority option of {src}")
    reply = _majority([str(a["value"]) if "value" in a else str(a["text"]) for a in answers])
    return Baseline(family, reply, f"majority answer of {src}")


def trivial_baselines(task_families: Sequence[str], world: SyntheticWorld | None = None, *,
                      world_config: Mapping[str, Any] | None = None, n_train: int = 200) -> dict[str, Baseline]:
    """Constant-reply baselines fitted on the synthetic world's train split (first `n_train` samples
    of each task of a family that the world trains, as `synthetic_items` scores them): counting the
    majority count, grounding the mean box, pointing the mean point, temporal the mean time, the
    others the majority answer."""
    families = tasks_lib.check_task_names(task_families)
    world = world or SyntheticWorld(world_config or {})
    out = {}
    for fam in families:
        train = [it for t in tasks_lib.family_tasks(fam, world)
                 for it in tasks_lib.task_items(world, "train", fam, t, limit=n_train)]
        if train:
            out[fam] = _fit_baseline(fam, train, n_train)
    return out
