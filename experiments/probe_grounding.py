"""Why is localisation not learned? Three measures on a trained export, one JSON line each.

    python experiments/probe_grounding.py --params=runs/g_one_sc/final --config_arg=objs=1,pos=0.5

1. `position_r2`: do the merged visual tokens carry their own grid row and column? A ridge probe
   from each token's features to its (row, col), fitted on 3/4 of held-out box images and scored (R^2)
   on the rest. Near 1: the position is there, linearly.
2. `coordinates`: teacher-forced on fixed training samples of the probe config, for the first digit
   of each of the four box coordinates: the mean log-prob of the true digit with the sample's own
   image and with another sample's image, and the argmax accuracy. Equal log-probs: the coordinates
   do not read the image at all.
3. `generated`: from the run's held-out predictions (`<workdir>/eval/results.json`, when present):
   the correlation of each generated coordinate with the true one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from vlm_jax import cli  # noqa: E402
from vlm_jax.configs import grounding_probe  # noqa: E402
from vlm_jax.data import processor as proc  # noqa: E402
from vlm_jax.data.synthetic import SyntheticWorld, load_tokenizer  # noqa: E402
from vlm_jax.eval import metrics  # noqa: E402
from vlm_jax.inference.loading import load_model, processor_config_for  # noqa: E402
from vlm_jax.model.vlm import Qwen3VL  # noqa: E402
from vlm_jax.train import data as data_lib  # noqa: E402
from vlm_jax.train import vision_probe  # noqa: E402


def position_r2(config, params, world: SyntheticWorld, processor_config, num_images: int) -> list[float]:
    """Held-out R^2 of a ridge probe from merged-token features to (row, col) on the merged grid."""
    model = Qwen3VL(config)
    encode = jax.jit(lambda p, px, g: model.apply({"params": p}, px, g, method=Qwen3VL.encode_vision)[0])
    feats, cells = [], []
    for i in range(num_images):
        out = proc.process_image(world.sample(i, "eval", task="ground_box")["images"][0], processor_config)
        grid = np.asarray(out["grid_thw"]).reshape(1, 3)
        tokens = np.asarray(encode(params, jnp.asarray(out["pixel_values"]), jnp.asarray(grid)))
        side = int(grid[0, 2]) // config.vision.spatial_merge_size
        feats.append(tokens)
        cells.append(np.stack(np.divmod(np.arange(len(tokens)), side), 1))
    x = np.concatenate(feats)
    x = np.c_[x, np.ones(len(x))]
    y = np.concatenate(cells).astype(np.float64)
    cut = len(x) * 3 // 4
    w = np.linalg.solve(x[:cut].T @ x[:cut] + 1e-2 * np.eye(x.shape[1]), x[:cut].T @ y[:cut])
    resid = ((x[cut:] @ w - y[cut:]) ** 2).sum(0)
    total = ((y[cut:] - y[cut:].mean(0)) ** 2).sum(0)
    return [round(float(v), 3) for v in 1.0 - resid / total]


def coordinate_digits(config, params, batches) -> list[dict]:
    """Per coordinate k: true first-digit log-prob with own vs swapped images, and argmax accuracy."""
    tok = load_tokenizer()
    logprob = vision_probe.make_answer_logprob_fn(config)
    rows = []
    for b in batches:
        lp, logits = jax.device_get(logprob(params, b))
        lp_swap, _ = jax.device_get(logprob(params, vision_probe.swap_images(b)))
        ids = vision_probe.sample_ids(b["segment_ids"])
        supervised = b["loss_weights"] > 0
        for sid in np.unique(ids[supervised]):
            r, c = np.nonzero(supervised & (ids == sid))
            words = [tok.id_to_token(int(t)) for t in b["targets"][r, c]]
            k = 0
            for j, w in enumerate(words):  # a number's first digit follows "Ġ[" or "Ġ"
                if w.isdigit() and j > 0 and words[j - 1] in ("Ġ[", "Ġ") and k < 4:
                    hit = int(logits[r[j], c[j]].argmax() == b["targets"][r[j], c[j]])
                    rows.append((k, lp[r[j], c[j]], lp_swap[r[j], c[j]], hit))
                    k += 1
    a = np.asarray(rows, np.float64).reshape(-1, 4)
    return [{"coord": k, "n": int((a[:, 0] == k).sum()), "logp_own": round(float(a[a[:, 0] == k, 1].mean()), 4),
             "logp_swapped": round(float(a[a[:, 0] == k, 2].mean()), 4),
             "argmax_acc": round(float(a[a[:, 0] == k, 3].mean()), 3)} for k in range(4) if (a[:, 0] == k).any()]


def generated_correlation(results_path: Path) -> dict | None:
    if not results_path.exists():
        return None
    pred, true = [], []
    for p in json.loads(results_path.read_text())["predictions"]:
        boxes = metrics.parse_boxes(p["reply"]) if p["family"] == "grounding" else []
        if boxes:
            pred.append(boxes[0])
            true.append(p["answer"]["bbox_2d"])
    if len(pred) < 3:
        return {"n": len(pred)}
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    corr = [float(np.corrcoef(pred[:, i], true[:, i])[0, 1]) if pred[:, i].std() > 0 else 0.0 for i in range(4)]
    return {"n": len(pred), "corr": [round(v, 3) for v in corr]}


FLAGS = flags.FlagValues()
flags.DEFINE_string("params", None, "an export (`<workdir>/final`) or a workdir", flag_values=FLAGS)
flags.DEFINE_string("config_arg", "", "the grounding_probe config options the run used", flag_values=FLAGS)
flags.DEFINE_integer("images", 200, "held-out images for the position probe", flag_values=FLAGS)
flags.DEFINE_integer("samples", 96, "fixed training samples for the coordinate probe", flag_values=FLAGS)


def run(args: flags.FlagValues) -> None:
    if not args.params:
        raise ValueError("--params is required")
    config, params, _ = load_model(args.params)
    c = grounding_probe.get_config(args.config_arg)
    world = SyntheticWorld(**dict(c.data.sources.synthetic.world))
    pc = processor_config_for(args.params)
    print(json.dumps({"position_r2": position_r2(config, params, world, pc, args.images)}), flush=True)
    probe_data = grounding_probe.get_config(",".join([args.config_arg, "tasks=ground_box"]).strip(","))
    batches = data_lib.first_batches(probe_data.data, args.samples, seed=0)
    print(json.dumps({"coordinates": coordinate_digits(config, params, batches)}), flush=True)
    results = Path(args.params).resolve()
    results = (results.parent if results.name == "final" else results) / "eval" / "results.json"
    print(json.dumps({"generated": generated_correlation(results)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the probe on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
