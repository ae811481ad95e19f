"""Why is localisation not learned? Measures on a trained export, one JSON line each.

    python experiments/probe_grounding.py --params=runs/g_one_sc/final --config_arg=objs=1,pos=0.5

1. `position_r2`: do the merged visual tokens carry their own grid row and column? A ridge probe
   from each token's features to its (row, col), fitted on 3/4 of held-out box images and scored (R^2)
   on the rest. Near 1: the position is there, linearly. Beside it, `common_mode`: the norm of the
   tokens' mean against that of their deviations, and their mean pairwise cosine. The decoder sees the
   tokens through RMSNorm, i.e. their direction only: near cosine 1 every visual token looks the same.
2. `coordinates`: teacher-forced on fixed training samples of the probe config, for the first digit
   of each of the four box coordinates: the mean log-prob of the true digit with the sample's own
   image and with another sample's image, and the argmax accuracy. Equal log-probs: the coordinates
   do not read the image at all.
3. `attention`: where the decoder looks from the query position of each coordinate's first digit: per
   layer, the attention mass on the sample's own image tokens (mean over heads and the largest head),
   beside the mass a uniform head would put there, and the best head's share of that mass on its top
   image token (1 / image_tokens when spread evenly: then the positions average out).
4. `generated`: from the run's held-out predictions (`<workdir>/eval/results.json`, when present):
   the correlation of each generated coordinate with the true one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
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
from vlm_jax.model import rope  # noqa: E402
from vlm_jax.model.vlm import Qwen3VL  # noqa: E402
from vlm_jax.train import data as data_lib  # noqa: E402
from vlm_jax.train import vision_probe  # noqa: E402


def visual_tokens(config, params, world: SyntheticWorld, processor_config, num_images: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Merged visual tokens of `num_images` held-out box images [N, D] and each one's (row, col)."""
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
    return np.concatenate(feats).astype(np.float64), np.concatenate(cells).astype(np.float64)


def common_mode(tokens: np.ndarray) -> dict:
    """How alike the visual tokens are in direction, which is all the decoder's RMSNorm keeps: the norm
    of their mean against the norm of their deviations from it, and the mean pairwise cosine."""
    mean = tokens.mean(0)
    unit = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    n = len(unit)
    pair_cos = (np.square(unit.sum(0)).sum() - n) / (n * (n - 1))
    return {"mean_norm": round(float(np.linalg.norm(mean)), 3),
            "deviation_norm": round(float(np.linalg.norm(tokens - mean, axis=1).mean()), 3),
            "pairwise_cos": round(float(pair_cos), 3)}


def position_r2(tokens: np.ndarray, cells: np.ndarray) -> list[float]:
    """Held-out R^2 of a ridge probe from merged-token features to (row, col) on the merged grid."""
    x, y = np.c_[tokens, np.ones(len(tokens))], cells
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
        for r, c, k in first_digit_positions(tok, b):
            rows.append((k, lp[r, c], lp_swap[r, c], int(logits[r, c].argmax() == b["targets"][r, c])))
    a = np.asarray(rows, np.float64).reshape(-1, 4)
    return [{"coord": k, "n": int((a[:, 0] == k).sum()), "logp_own": round(float(a[a[:, 0] == k, 1].mean()), 4),
             "logp_swapped": round(float(a[a[:, 0] == k, 2].mean()), 4),
             "argmax_acc": round(float(a[a[:, 0] == k, 3].mean()), 3)} for k in range(4) if (a[:, 0] == k).any()]


def first_digit_positions(tok, b) -> list[tuple[int, int, int]]:
    """(row, column, coordinate index) of each box coordinate's first digit among the targets of `b`."""
    ids = vision_probe.sample_ids(b["segment_ids"])
    supervised = b["loss_weights"] > 0
    out = []
    for sid in np.unique(ids[supervised]):
        r, c = np.nonzero(supervised & (ids == sid))
        words = [tok.id_to_token(int(t)) for t in b["targets"][r, c]]
        k = 0
        for j, w in enumerate(words):  # a number's first digit follows "Ġ[" or "Ġ"
            if w.isdigit() and j > 0 and words[j - 1] in ("Ġ[", "Ġ") and k < 4:
                out.append((int(r[j]), int(c[j]), k))
                k += 1
    return out


def capture_attention_inputs(config, params, b) -> dict[str, list[np.ndarray]]:
    """Every decoder layer's normed q and k (before RoPE), v, and the input of o_proj (the attention
    output), sent to the host from inside the layer scan in layer order."""
    got = {"q_norm": [], "k_norm": [], "v_proj": [], "o_proj": []}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = context.module.name
        if context.method_name == "__call__" and name in got:
            value = args[0] if name == "o_proj" else out
            jax.debug.callback(lambda v, n=name: got[n].append(np.asarray(v)), value, ordered=True)
        return out

    model = Qwen3VL(config)
    with nn.intercept_methods(interceptor):
        jax.block_until_ready(model.apply({"params": params}, *(jnp.asarray(b[k]) for k in (
            "input_ids", "position_ids", "segment_ids", "pixel_values", "grid_thw"))))
    jax.effects_barrier()
    vision_layers = len(got["v_proj"]) - config.text.num_layers  # the ViT has no q_norm/k_norm
    got["v_proj"], got["o_proj"] = got["v_proj"][vision_layers:], got["o_proj"][vision_layers:]
    return got


def attention_probs(config, q: np.ndarray, k: np.ndarray, b, row: int, col: int) -> np.ndarray:
    """[heads, S] attention of query (row, col) over its row, from normed q, k [B, S, heads, head_dim]."""
    t = config.text
    cos, sin = rope.mrope_cos_sin(jnp.asarray(b["position_ids"][:, row:row + 1]), t.head_dim, t.rope_theta,
                                  t.mrope_section, t.mrope_layout, t.rope_scaling)
    q = np.asarray(rope.apply_rope(jnp.asarray(q[row:row + 1]), cos, sin))[0, col]
    k = np.asarray(rope.apply_rope(jnp.asarray(k[row:row + 1]), cos, sin))[0]
    k = np.repeat(k, t.num_heads // t.num_kv_heads, axis=1)  # GQA: query head h reads kv head h // group
    seg = b["segment_ids"][row]
    visible = (seg == seg[col]) & (np.arange(seg.shape[0]) <= col)
    logits = np.where(visible[None], np.einsum("hd,shd->hs", q, k) / np.sqrt(t.head_dim), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def attention_to_image(config, params, batches) -> list[dict]:
    """Per layer: attention mass on the own image from the coordinates' first-digit queries."""
    tok = load_tokenizer()
    mass, uniform, n_image = [], [], 0
    for b in batches:
        got = capture_attention_inputs(config, params, b)
        image = b["input_ids"] == config.image_token_id
        seg = b["segment_ids"]
        where = first_digit_positions(tok, b)
        per_layer = []
        for q, k in zip(got["q_norm"], got["k_norm"], strict=True):
            rows = []
            for r, c, _ in where:
                on_image = attention_probs(config, q, k, b, r, c)[:, image[r] & (seg[r] == seg[r, c])]
                rows.append(np.stack([on_image.sum(-1), on_image.max(-1) / on_image.sum(-1)], -1))
            per_layer.append(np.stack(rows))  # [queries, heads, (mass, top image token's share of it)]
        mass.append(np.stack(per_layer))  # [layers, queries, heads, 2]
        for r, c, _ in where:
            own = (seg[r] == seg[r, c])[: c + 1]
            uniform.append(float((image[r, : c + 1] & own).sum() / own.sum()))
            n_image = int((image[r] & (seg[r] == seg[r, c])).sum())
    m = np.concatenate(mass, axis=1)
    out = []
    for i in range(m.shape[0]):
        head = int(m[i, :, :, 0].mean(0).argmax())
        out.append({"layer": i, "image_mass_mean": round(float(m[i, :, :, 0].mean()), 4),
                    "image_mass_best_head": round(float(m[i, :, head, 0].mean()), 4),
                    "top_token_share_best_head": round(float(m[i, :, head, 1].mean()), 4),
                    "uniform_share": round(float(np.mean(uniform)), 4), "image_tokens": n_image})
    return out


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
    tokens, cells = visual_tokens(config, params, world, pc, args.images)
    print(json.dumps({"position_r2": position_r2(tokens, cells), "common_mode": common_mode(tokens)}), flush=True)
    probe_data = grounding_probe.get_config(",".join([args.config_arg, "tasks=ground_box"]).strip(","))
    batches = data_lib.first_batches(probe_data.data, args.samples, seed=0)
    print(json.dumps({"coordinates": coordinate_digits(config, params, batches)}), flush=True)
    print(json.dumps({"attention": attention_to_image(config, params, batches[:1])}), flush=True)
    results = Path(args.params).resolve()
    results = (results.parent if results.name == "final" else results) / "eval" / "results.json"
    print(json.dumps({"generated": generated_correlation(results)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the probe on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
