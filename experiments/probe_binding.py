"""Does the model bind the question's words to the right object? Measures on a finished run, one JSON line each.

    python experiments/probe_binding.py --workdir=runs/synthetic_tiny --config=vlm_jax/configs/synthetic_tiny.py

`--config` is the experiment config the run trained with (it rebuilds the run's synthetic world, so each
held-out prediction in `<workdir>/eval/results.json` is matched with its scene).

1. `by_objects`: held-out score of each grounding and pointing task by the number of objects in the scene.
   A model that finds *an* object but not the named one scores about 1/n: 1, 1/2, 1/3.
2. `counting`: predicted counts by (objects in the scene n, true count k). When, for each n, the
   predictions are distributed alike whatever k is, the answer depends on how many objects there are and
   not on which of them match the question: `binding_gap` is the mean total-variation distance between
   the prediction distributions of different k at the same n (0: no binding; 1: fully separated).
3. `categories`: counting exact match by what the question names (a colour, a shape, or both), and
   grounding / pointing scores by what tells the target apart from the other objects: nothing to tell
   (`alone`), its colour (`colour`), only its shape (`shape`: its colour is shared), or only both together
   (`both`). A model that reads colour but not shape scores high on `colour` and low on `shape`.
4. `attributes`: a ridge probe from each merged visual token to the colour and the shape of the object
   covering most of its cell (held-out accuracy on tokens over objects, beside the majority class). What
   the decoder could read, if it looked.
"""

from __future__ import annotations

import collections
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments.probe_grounding import visual_tokens  # noqa: E402
from vlm_jax import cli  # noqa: E402
from vlm_jax.data.synthetic import SyntheticWorld  # noqa: E402
from vlm_jax.inference.loading import load_model, processor_config_for  # noqa: E402


def _index(pred_id: str) -> int:
    return int(pred_id.rsplit("-", 1)[1])


def scores_by_objects(predictions: list[dict], world: SyntheticWorld, split: str) -> dict:
    """{task: {n objects: [items, mean score]}} for the grounding and pointing predictions."""
    groups: dict[str, dict[int, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for p in predictions:
        if p.get("family") not in ("grounding", "pointing"):
            continue
        plan = world.sample(_index(p["id"]), split, p["task"])["meta"]["plan"]
        groups[p["task"]][len(plan["objects"])].append(float(p["score"]))
    return {t: {n: [len(v), round(float(np.mean(v)), 3)] for n, v in sorted(g.items())} for t, g in groups.items()}


def binding_gap(table: dict[int, dict[int, collections.Counter]]) -> float | None:
    """Mean total-variation distance between the predicted-count distributions of different true counts k
    in scenes with the same number of objects n (pairs of k at each n with at least 10 items each)."""
    gaps = []
    for by_k in table.values():
        dists = {k: c for k, c in by_k.items() if sum(c.values()) >= 10}
        for a, b in itertools.combinations(sorted(dists), 2):
            na, nb = sum(dists[a].values()), sum(dists[b].values())
            keys = set(dists[a]) | set(dists[b])
            gaps.append(0.5 * sum(abs(dists[a][x] / na - dists[b][x] / nb) for x in keys))
    return round(float(np.mean(gaps)), 3) if gaps else None


def counting_table(predictions: list[dict], world: SyntheticWorld, split: str) -> dict:
    """Predicted counts by (n objects, true k), and the binding gap."""
    table: dict[int, dict[int, collections.Counter]] = collections.defaultdict(
        lambda: collections.defaultdict(collections.Counter))
    for p in predictions:
        if p.get("task") != "count":
            continue
        plan = world.sample(_index(p["id"]), split, "count")["meta"]["plan"]
        table[len(plan["objects"])][int(plan["count"])][str(p.get("final"))] += 1
    return {"predictions": {f"n={n}": {f"k={k}": dict(sorted(c.items())) for k, c in sorted(by_k.items())}
                            for n, by_k in sorted(table.items())},
            "binding_gap": binding_gap(table)}


def count_category(plan: dict) -> str:
    """What a count question names: "colour", "shape" or "both"."""
    named = [k for k in ("color", "shape") if plan["category"].get(k)]
    return {("color",): "colour", ("shape",): "shape", ("color", "shape"): "both"}[tuple(named)]


def target_category(plan: dict) -> str:
    """What tells a grounding target apart from the other objects: "alone" (no other object), "colour" (no
    other object has its colour), "shape" (its colour is shared, its shape is not), "both" (only the pair)."""
    objects, target = plan["objects"], plan["objects"][plan["target"]]
    others = [o for i, o in enumerate(objects) if i != plan["target"]]
    if not others:
        return "alone"
    if all(o["color"] != target["color"] for o in others):
        return "colour"
    return "shape" if all(o["shape"] != target["shape"] for o in others) else "both"


def scores_by_category(predictions: list[dict], world: SyntheticWorld, split: str) -> dict:
    """{task: {category: [items, mean score]}}: counting by `count_category`, grounding and pointing by
    `target_category`."""
    groups: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for p in predictions:
        if p.get("task") == "count":
            kind = count_category(world.sample(_index(p["id"]), split, "count")["meta"]["plan"])
        elif p.get("family") in ("grounding", "pointing"):
            kind = target_category(world.sample(_index(p["id"]), split, p["task"])["meta"]["plan"])
        else:
            continue
        groups[p["task"]][kind].append(float(p["score"]))
    return {t: {k: [len(v), round(float(np.mean(v)), 3)] for k, v in sorted(g.items())} for t, g in groups.items()}


def cell_labels(plan: dict, rows: int, cols: int, cell: int) -> list[tuple[str, str]]:
    """(colour, shape) of the object covering most of each cell (at least a quarter of it), else ("bg", "bg")."""
    out = []
    for r, c in itertools.product(range(rows), range(cols)):
        best, label = 0, ("bg", "bg")
        for o in plan["objects"]:
            ox = min(o["x"] + o["s"], (c + 1) * cell) - max(o["x"], c * cell)
            oy = min(o["y"] + o["s"], (r + 1) * cell) - max(o["y"], r * cell)
            if ox > 0 and oy > 0 and ox * oy > best and ox * oy * 4 >= cell * cell:
                best, label = ox * oy, (o["color"], o["shape"])
        out.append(label)
    return out


def ridge_accuracy(x: np.ndarray, labels: list[str], ridge: float = 1.0) -> dict:
    """Held-out (last quarter) accuracy of a one-hot ridge probe, on tokens whose label is not "bg"."""
    classes = sorted(set(labels))
    y = np.eye(len(classes))[[classes.index(v) for v in labels]]
    x = np.c_[(x - x.mean(0)) / (x.std(0) + 1e-6), np.ones(len(x))]
    cut = len(x) * 3 // 4
    w = np.linalg.solve(x[:cut].T @ x[:cut] + ridge * np.eye(x.shape[1]), x[:cut].T @ y[:cut])
    pred, true = (x[cut:] @ w).argmax(1), y[cut:].argmax(1)
    on_object = true != classes.index("bg") if "bg" in classes else np.ones_like(true, bool)
    majority = np.bincount(true[on_object]).max() / max(on_object.sum(), 1)
    return {"accuracy": round(float((pred == true)[on_object].mean()), 3), "majority": round(float(majority), 3),
            "tokens": int(on_object.sum())}


def attribute_probe(config, params, world: SyntheticWorld, processor_config, num_images: int) -> dict:
    tokens, cells = visual_tokens(config, params, world, processor_config, num_images)
    side = int(cells[:, 1].max()) + 1
    cell = world.height // side
    labels = []
    for i in range(num_images):
        labels += cell_labels(world.sample(i, "eval", task="ground_box")["meta"]["plan"], side, side, cell)
    return {"colour": ridge_accuracy(tokens, [c for c, _ in labels]),
            "shape": ridge_accuracy(tokens, [s for _, s in labels])}


FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "the experiment config the run trained with",
                                          flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "the run's workdir (with eval/results.json and final/)", flag_values=FLAGS)
flags.DEFINE_string("split", "eval", "the held-out split the run was scored on", flag_values=FLAGS)
flags.DEFINE_integer("images", 300, "held-out images for the attribute probe (0: skip it)", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    if not args.workdir or _CONFIG.value is None:
        raise ValueError("--workdir and --config are required")
    workdir = Path(args.workdir)
    world = SyntheticWorld(dict(_CONFIG.value.data.sources.synthetic.world))
    predictions = json.loads((workdir / "eval" / "results.json").read_text())["predictions"]
    print(json.dumps({"by_objects": scores_by_objects(predictions, world, args.split)}), flush=True)
    print(json.dumps({"counting": counting_table(predictions, world, args.split)}), flush=True)
    print(json.dumps({"categories": scores_by_category(predictions, world, args.split)}), flush=True)
    if args.images:
        config, params, _ = load_model(workdir / "final")
        pc = processor_config_for(workdir / "final")
        print(json.dumps({"attributes": attribute_probe(config, params, world, pc, args.images)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the probe on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
