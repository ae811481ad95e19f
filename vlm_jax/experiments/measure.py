"""What a finished run of a sweep is scored by, as flat {name: value}:

    heldout/<family>[/baseline|/vision_off|/mean_iou|...]   the train loop's held-out evaluation
                                                            (`<run>/eval/results.json`)
    start/<family>, gain/<family>                           a post-training run's score of its starting params
                                                            (eval.at_start) and heldout minus it
    <eval>/<family>[/...]                                   an extra evaluation on another world (`extra_eval`,
                                                            `<run>/eval_<eval>/results.json`)
    train/final_loss, train/step_seconds, train/seconds,    the run's summary and metric log
    train/compile_seconds
    anything an experiment's `measure(arg, config, run_dir)` adds (e.g. `vit/forward_ms`, `vit_forward_ms` here)

An extra evaluation scores the run's exported params (`<run>/final`) with the run's processor
settings on the held-out split of the training world changed by `world` (longer videos, another
frame rate, ...), with constant-answer baselines fitted on that world.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections as mlc
import numpy as np

HELDOUT = "heldout"
START, GAIN = "start", "gain"  # a post-training run's starting score and its change (`start_scores`)
# Keys of an extra evaluation: world overrides, eval task families, items per family (0: the whole split),
# the vision-off control, the held-out split. Missing ones follow the run's `config.eval`.
EVAL_KEYS = ("world", "tasks", "num_per_task", "vision_off", "split")


def eval_scores(results: Mapping[str, Any], prefix: str) -> dict[str, float | None]:
    """Flat scores of an evaluation's results.json: `<prefix>/<family>` (the headline metric) and
    `<prefix>/<family>/<extra>` (n, baseline, vision_off, mean_iou, cer, ...)."""
    from vlm_jax.eval.tasks import FAMILIES

    out: dict[str, float | None] = {}
    for family, row in results.get("tasks", {}).items():
        headline = FAMILIES[family].metric if family in FAMILIES else None
        for key, value in row.items():
            if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
                continue  # intervals (lists), method names
            name = f"{prefix}/{family}" if key == headline else f"{prefix}/{family}/{key}"
            out[name] = None if value is None else float(value)
    return out


def train_scores(run_dir: str) -> dict[str, float | None]:
    """train/final_loss, train/seconds (the run's wall time to the end of training) and train/step_seconds
    (the median over the logged windows; compilation excluded) of a run directory."""
    out: dict[str, float | None] = {}
    summary = _read_json(os.path.join(run_dir, "summary.json")) or {}
    for key, name in (("final_loss", "final_loss"), ("train_seconds", "seconds"),
                      ("compile_seconds", "compile_seconds")):
        if summary.get(key) is not None:
            out[f"train/{name}"] = float(summary[key])
    steps = [r["step_seconds"] for r in metric_rows(run_dir) if r.get("step_seconds") is not None]
    if steps:
        out["train/step_seconds"] = float(statistics.median(steps))
    return out


def metric_rows(run_dir: str) -> list[dict[str, Any]]:
    """The rows of a run's `metrics.jsonl` (one per logged step), or [] when it has none."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def start_scores(rows: list[dict[str, Any]], heldout: Mapping[str, float | None]) -> dict[str, float | None]:
    """`start/<family>`, the headline metric of a post-training run's evaluation of its starting params
    (`eval.at_start`: the iteration-0 row of its `metric_rows`), and `gain/<family>` = heldout - start, for
    every family of `heldout` (`heldout/<family>` scores). Empty when the run has no such row."""
    from vlm_jax.eval.tasks import FAMILIES

    start = next((r for r in rows if r.get("step") == 0), None)
    out: dict[str, float | None] = {}
    for family in (k.split("/")[1] for k in heldout if k.count("/") == 1):
        value = (start or {}).get(f"eval/{family}/{FAMILIES[family].metric}") if family in FAMILIES else None
        if value is None:
            continue
        out[f"{START}/{family}"] = float(value)
        final = heldout.get(f"{HELDOUT}/{family}")
        out[f"{GAIN}/{family}"] = None if final is None else float(final) - float(value)
    return out


def eval_curves(run_dir: str, families: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """Per family of `families`: (step, headline metric) of every held-out evaluation the run logged."""
    from vlm_jax.eval.tasks import FAMILIES

    rows = metric_rows(run_dir)
    out = {}
    for family in families:
        key = f"eval/{family}/{FAMILIES[family].metric}" if family in FAMILIES else None
        points = {int(r["step"]): float(r[key]) for r in rows if key and r.get(key) is not None}  # resumed: the last
        out[family] = sorted(points.items())
    return out


def run_scores(run_dir: str, eval_names: tuple[str, ...] = ()) -> dict[str, float | None]:
    """Every score of a finished run (see the module docstring), without the experiment's own `measure`."""
    out = train_scores(run_dir)
    held = _read_json(os.path.join(run_dir, "eval", "results.json"))
    if held is not None:
        out.update(eval_scores(held, HELDOUT))
        out.update(start_scores(metric_rows(run_dir), out))
    for name in eval_names:
        res = _read_json(extra_eval_path(run_dir, name))
        if res is not None:
            out.update(eval_scores(res, name))
    return out


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- extra evaluations


def extra_eval_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, f"eval_{name}", "results.json")


def eval_spec(config: mlc.ConfigDict, spec: Mapping[str, Any], name: str = "eval") -> dict[str, Any]:
    """The full settings of an extra evaluation (`EVAL_KEYS`; missing ones from `config.eval`), checked:
    unknown keys, task names, the world and its split fail naming them."""
    from vlm_jax.configs import experiment
    from vlm_jax.data.synthetic import SyntheticWorld
    from vlm_jax.eval import tasks as tasks_lib

    unknown = sorted(set(spec) - set(EVAL_KEYS))
    if unknown:
        raise ValueError(f"extra eval {name!r}: unknown keys {unknown} (expected {', '.join(EVAL_KEYS)})")
    if name == HELDOUT:
        raise ValueError(f"extra eval name {HELDOUT!r} is the train loop's own evaluation; choose another")
    e = config.eval
    out = {"world": {**experiment.eval_world_config(config), **dict(spec.get("world") or {})},
           "tasks": tuple(spec.get("tasks", e.tasks)), "num_per_task": int(spec.get("num_per_task", e.num_per_task)),
           "vision_off": bool(spec.get("vision_off", False)), "split": str(spec.get("split", e.split))}
    tasks_lib.check_task_names(out["tasks"])
    if not out["tasks"]:
        raise ValueError(f"extra eval {name!r}: no tasks")
    try:
        world = SyntheticWorld(out["world"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"extra eval {name!r}: world {out['world']}: {err}") from err
    world.split_size(out["split"])  # ValueError naming the splits
    return out


def extra_eval(config: mlc.ConfigDict, run_dir: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Scores `<run_dir>/final` on the evaluation `spec` (see `eval_spec`); writes and returns its
    results.json (with baselines on the same items). Already written: read back, not recomputed."""
    path = extra_eval_path(run_dir, name)
    done = _read_json(path)
    if done is not None:
        return done
    from vlm_jax.configs import experiment
    from vlm_jax.eval import harness
    from vlm_jax.eval import tasks as tasks_lib
    from vlm_jax.inference.loading import load_model

    s = eval_spec(config, spec, name)
    items = tasks_lib.load_items(list(s["tasks"]), split=s["split"], num_per_task=s["num_per_task"],
                                 world_config=s["world"])
    model_config, params, tokenizer = load_model(os.path.join(run_dir, "final"))
    report = harness.evaluate(model_config, params, tokenizer, items, batch_size=config.eval.batch_size,
                              max_new_tokens=config.eval.max_new_tokens,
                              processor=experiment.processor_config(config), vision_off_control=s["vision_off"])
    baselines = harness.trivial_baselines(list(s["tasks"]), world_config=s["world"])
    print(f"\nextra eval {name} (world {s['world']}):\n{report.table(baselines=baselines)}", flush=True)
    result = report.to_json(baselines=baselines)
    result["settings"].update(world=s["world"], split=s["split"], num_per_task=s["num_per_task"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    return result


# ----------------------------------------------------------------------------- timing


def vit_forward_ms(run_dir: str, *, image_size: int, num_images: int, repeats: int = 5) -> float:
    """Median wall time (ms) of one jitted forward of the run's vision tower (`<run_dir>/final`, the
    ViT alone: no merger, no decoder) over `num_images` square images of `image_size` pixels in one
    patch buffer, after a compiling call. Random pixels: the cost does not depend on their values."""
    import jax

    from vlm_jax.model.vision import VisionTower
    from vlm_jax.params.store import load_params

    if repeats < 1 or num_images < 1:
        raise ValueError(f"repeats={repeats} and num_images={num_images} must be >= 1")
    mc, params = load_params(os.path.join(run_dir, "final"))
    v = mc.vision
    side = image_size // v.patch_size
    if side * v.patch_size != image_size or side % v.spatial_merge_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size x merge = "
                         f"{v.patch_size * v.spatial_merge_size}")
    dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    pixels = np.random.default_rng(0).standard_normal((num_images * side * side, dim)).astype(np.float32)
    grid = np.tile(np.asarray([[1, side, side]], np.int32), (num_images, 1))
    fn = jax.jit(lambda p, x, g: VisionTower(mc).apply({"params": p}, x, g)[0])
    vision = params["vision"]
    jax.block_until_ready(fn(vision, pixels, grid))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(vision, pixels, grid))
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))
