"""Running a benchmark: items -> batched generation (`harness.predict`) -> scored records -> summary.

    bench = benchmarks.get("docvqa")
    items = load_items(bench, "data/docvqa", num=100)
    report = evaluate(bench, items, model_config, params, tokenizer, batch_size=8, processor=pcfg)
    print(report.table()); report.write("eval_results/docvqa")

`score_replies` scores known replies without a model. Items are generated in chunks, their media read
chunk by chunk, so memory holds one chunk's pixels, not the benchmark's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlm_jax.eval import stats
from vlm_jax.eval.benchmarks.spec import Benchmark, Item, ReadOptions
from vlm_jax.eval.tasks import EvalItem
from vlm_jax.inference.prompt import build_messages
from vlm_jax.inference.thinking import answer_text

PREDICTIONS_FILE = "predictions.json"
SUMMARY_FILE = "summary.json"


def load_items(bench: Benchmark, data: str | os.PathLike, *, num: int = 0,
               options: ReadOptions | None = None) -> list[Item]:
    """The benchmark's items from `data` (a file, or the folder its dataset unpacks to); with `num` > 0 the
    first `num` questions (all circular copies of each, for MMBench)."""
    if num < 0:
        raise ValueError(f"num must be >= 0 (0: all), got {num}")
    items = bench.read(Path(data), options or ReadOptions())
    if not items:
        raise ValueError(f"no {bench.name} items in {data}")
    if num:
        keep = list(dict.fromkeys(it.meta.get("group", it.id) for it in items))[:num]
        keep_set = set(keep)
        items = [it for it in items if it.meta.get("group", it.id) in keep_set]
    return items


def eval_item(bench: Benchmark, item: Item) -> EvalItem:
    """The harness's item: a user turn with the media before the prompt text, media decoded now."""
    return EvalItem(id=item.id, family=bench.family,
                    messages=build_messages(item.prompt, len(item.images), len(item.videos)),
                    images=[m.load() for m in item.images], videos=[m.load() for m in item.videos],
                    answer=item.answer, task=bench.name, meta=item.meta)


@dataclasses.dataclass
class BenchmarkReport:
    """records: one dict per item (id, prompt, reply, final, score, malformed, extras, answer, meta), in
    item order; settings: how it was run."""

    bench: Benchmark
    records: list[dict]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def headline_values(self) -> list[float]:
        """The values whose mean is the headline metric (items' scores, or MMBench's circular groups)."""
        if self.bench.headline is not None:
            return self.bench.headline(self.records)
        return [r["score"] for r in self.records]

    def estimate(self) -> stats.Estimate:
        return stats.estimate(self.headline_values(), proportion=self.bench.proportion)

    def summary(self) -> dict[str, Any]:
        """The headline metric (value, n, 95% interval), malformed replies, further aggregates, settings."""
        est = self.estimate()
        out: dict[str, Any] = {"benchmark": self.bench.name, "metric": self.bench.metric, "score": est.value,
                               "n": est.n, "n_items": len(self.records), "ci95": [est.low, est.high],
                               "interval": est.method, "malformed": sum(r["malformed"] for r in self.records)}
        if self.bench.summarize is not None:
            out["aggregates"] = self.bench.summarize(self.records)
        out.update(prompt_source=self.bench.prompt_source, metric_source=self.bench.metric_source,
                   settings=dict(self.settings), seconds=round(self.seconds, 2))
        return _jsonable(out)

    def table(self) -> str:
        """A two-line text table: benchmark, metric, n, score [95% CI], malformed, then the aggregates."""
        s = self.summary()
        extra = "  ".join(f"{k}={v:.3f}" for k, v in (s.get("aggregates") or {}).items() if isinstance(v, float))
        rows = [["benchmark", "metric", "n", "score [95% CI]", "malformed", "extra"],
                [s["benchmark"], s["metric"], str(s["n"]), self.estimate().format(), str(s["malformed"]), extra]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), lines[1]])

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Writes predictions.json (the records) and summary.json into `out_dir`; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pred, summ = out / PREDICTIONS_FILE, out / SUMMARY_FILE
        pred.write_text(json.dumps(_jsonable(self.records), indent=1, ensure_ascii=False), encoding="utf-8")
        summ.write_text(json.dumps(self.summary(), indent=1, ensure_ascii=False), encoding="utf-8")
        return pred, summ


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and not isinstance(x, str | bytes):  # numpy scalars
        return _jsonable(x.item())
    return x if x is None or isinstance(x, str | int | float | bool) else str(x)


def score_replies(bench: Benchmark, items: Sequence[Item], replies: Sequence[str], *,
                  settings: Mapping[str, Any] | None = None, seconds: float = 0.0) -> BenchmarkReport:
    """Scores `replies[i]` (model text; only what follows `</think>` counts) against `items[i]`."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} items but {len(replies)} replies")
    records = []
    for it, reply in zip(items, replies):
        final = answer_text(reply)
        s = bench.score(it.answer, final)
        records.append({"id": it.id, "prompt": it.prompt, "reply": reply, "final": final, "score": float(s.value),
                        "malformed": bool(s.malformed), "extras": {k: float(v) for k, v in s.extras.items()},
                        "answer": it.answer, "meta": it.meta})
    return BenchmarkReport(bench, records, dict(settings or {}), seconds)


def evaluate(bench: Benchmark, items: Sequence[Item], model_config: Any, params: Any, tokenizer: Any, *,
             batch_size: int = 8, max_new_tokens: int | None = None, preset: str = "greedy", thinking: bool = False,
             processor: Any = None, seed: int = 0, chunk_batches: int = 16, progress: bool = True) -> BenchmarkReport:
    """Generates a reply per item (greedy by default; `max_new_tokens` defaults to the benchmark's) in
    chunks of `chunk_batches` batches, with a progress bar on stderr, and scores them."""
    from vlm_jax.eval import harness

    max_new_tokens = max_new_tokens or bench.max_new_tokens
    chunk = batch_size * max(chunk_batches, 1)
    bar = _progress_bar(len(items), bench.name) if progress else None
    t0 = time.perf_counter()
    replies: list[str] = []
    try:
        for start in range(0, len(items), chunk):
            evals = [eval_item(bench, it) for it in items[start:start + chunk]]
            replies += harness.predict(model_config, params, tokenizer, evals, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, preset=preset, thinking=thinking,
                                       processor=processor, seed=seed + start,
                                       on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    settings = {"model": model_config.get("name", ""), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                "preset": preset, "thinking": thinking, "seed": seed}
    return score_replies(bench, items, replies, settings=settings, seconds=time.perf_counter() - t0)


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="item", file=sys.stderr, dynamic_ncols=True)
