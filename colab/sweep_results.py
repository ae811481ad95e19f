# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlm-jax/vlm_jax/blob/main/colab/sweep_results.ipynb)
#
# # Read an ablation sweep: the per-arm table and the plots
#
# An ablation sweep (`vlm_jax/experiments/`) trains every run of one experiment file (`experiments/ablate_*.py`:
# one question, two or more arms, three seeds each) and gathers them. From a shell:
#
#     python -m vlm_jax.experiments.sweep --config=experiments/ablate_deepstack.py \
#         --workdir=runs/sweeps/ablate_deepstack
#
# (without `--workdir` it writes to `runs/sweeps/<experiment name>`; with `--smoke`, to `<workdir>/smoke`). The
# sweep directory holds one directory per run (`deepstack-False_seed-0/`, ...: the train loop's `summary.json`,
# `metrics.jsonl` and `eval/results.json`, and the sweep's `sweep_run.json` record of the run's scores) and,
# gathered from them,
#
# * `results.json`: the experiment's claim, its arm option, the reference arm, the direction the claim expects
#   (`EXPECTED`), every run's options, status and scores, and the per-arm statistics (`results.summarise`),
# * `results.md`: the same as a report, with a verdict per arm and metric,
# * `plots/<metric>.png`: each arm's mean with its spread, the seeds as dots (`plots.plot_metric`).
#
# This notebook reads `SWEEP_DIR/results.json` (nothing else is needed: copy that file from the machine that
# ran the sweep, or mount the Drive that holds it), tabulates each arm per metric and draws the sweep's plots
# here and to `WORKDIR`. It trains nothing. **`SMOKE = True` reads a fabricated demo sweep** that it writes
# itself (two arms x three seeds of made-up numbers, labelled as such), so the cells run without a sweep.

# %%
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "vlm_jax @ git+https://github.com/vlm-jax/vlm_jax"],
                   check=True)

# %% tags=["parameters"]
SMOKE = False  # True: a fabricated demo sweep (2 arms x 3 seeds, nothing trained) instead of SWEEP_DIR (CI)
SWEEP_DIR = "runs/sweeps/ablate_deepstack"  # a sweep's --workdir (its results.json); on Colab e.g. a Drive path
WORKDIR = "runs/colab/sweep_results"  # the table and plots this notebook writes

# %%
import csv
import json
import os

import numpy as np
from IPython.display import Image, Markdown, display

from vlm_jax.experiments import plots, results, spec, sweep

# %% [markdown]
# ## SMOKE only: a fabricated demo sweep
#
# With `SMOKE = True` this cell writes a sweep directory whose numbers are **made up**: no model is trained or
# evaluated. It is a stand-in experiment file shaped like `experiments/ablate_deepstack.py` (arm `deepstack`,
# reference `False`, the claim expecting `True` to score higher; its `CLAIM` says it is fabricated) and, for
# each of its six runs, the two files of those the train loop leaves that a sweep reads: `summary.json` (the
# final loss, the path of the exported params) and `eval/results.json` (per held-out family: the score, n,
# the constant-answer baseline and the vision-off control), each with a `note` saying the numbers are made up.
# From there the sweep's own code takes over, as after real runs: `sweep.execute` finds each run trained (so it
# trains nothing) and writes its record, and `sweep.write_results` writes `results.json`, `results.md` and
# `plots/`.
#
# The made-up scores: per family, the reference arm's level plus a per-seed shift that both arms share (a
# seed fixes the init and the data order) plus a little per-run noise, and `deepstack=True` shifted by
# +0.05 on counting, +0.01 on grounding and -0.05 on pointing; the final loss falls 0.05 with it. So the demo
# shows each kind of verdict: agrees with the claim, no difference resolved, contradicts the claim.

# %%
DEMO_EXPERIMENT = '''"""FABRICATED DEMO for colab/sweep_results: the shape of experiments/ablate_deepstack.py; the
notebook writes made-up scores for its runs, nothing is trained."""
from vlm_jax.configs import synthetic_tiny
from vlm_jax.experiments import common

CLAIM = ("FABRICATED DEMO NUMBERS, no model was trained (colab/sweep_results, SMOKE): shaped like "
         "experiments/ablate_deepstack.py, whose claim is that DeepStack raises the held-out scores.")
ARM = "deepstack"
REFERENCE = False
EXPECTED = {True: +1}


def _arg(arg):
    return common.parse(arg, deepstack=True)


def get_config(arg=None):
    a = _arg(arg)
    c = synthetic_tiny.get_config()
    c.stage = "fabricated_demo"
    c.model.deepstack = a["deepstack"]
    return common.finish(c, a)


def sweep(add, arg=None):
    for seed in common.seeds(_arg(arg)):
        for deepstack in (False, True):
            add(deepstack=deepstack, seed=seed)


def metrics(arg=None):
    return ["heldout/counting", "heldout/grounding", "heldout/pointing", "train/final_loss"]
'''
# family: (headline metric, the reference arm's level, the deepstack=True shift, the constant-answer baseline)
DEMO_SCORES = {"counting": ("exact", 0.55, +0.05, 0.33), "grounding": ("acc@iou0.5", 0.40, +0.01, 0.12),
               "pointing": ("acc", 0.65, -0.05, 0.30)}
FABRICATED = "FABRICATED demo numbers written by colab/sweep_results (SMOKE): no model was trained or evaluated"


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_fake_run(run_dir, run):
    """The two files of `run_dir` a sweep reads after `train_and_evaluate`, with made-up numbers."""
    on = bool(run.options["deepstack"])
    shared = np.random.default_rng(run.seed).normal(0.0, 0.02)  # what a seed does to both arms
    noise = np.random.default_rng([run.seed, int(on)]).normal(0.0, 0.01, len(DEMO_SCORES))
    tasks = {}
    for (family, (metric, level, shift, baseline)), e in zip(DEMO_SCORES.items(), noise):
        tasks[family] = {metric: round(level + shift * on + shared + e, 3), "n": 1000, "malformed": 0,
                         "baseline": baseline, "vision_off": round(baseline + 0.02, 3)}
    write_json(os.path.join(run_dir, "eval", "results.json"), {"note": FABRICATED, "tasks": tasks})
    write_json(os.path.join(run_dir, "summary.json"),
               {"note": FABRICATED, "final_params": os.path.join(run_dir, "final"),
                "final_loss": round(0.9 - 0.05 * on - shared, 4)})

if SMOKE:
    SWEEP_DIR = os.path.join(WORKDIR, "fabricated_demo_sweep")
    os.makedirs(SWEEP_DIR, exist_ok=True)
    with open(os.path.join(WORKDIR, "fabricated_demo.py"), "w") as f:
        f.write(DEMO_EXPERIMENT)
    experiment = spec.load_experiment(os.path.join(WORKDIR, "fabricated_demo.py"))
    runs = experiment.runs()
    for run in runs:
        run_dir = os.path.join(SWEEP_DIR, run.name)
        write_fake_run(run_dir, run)
        sweep.execute(experiment, run, experiment.config(run), run_dir)  # trained already: records the scores
    sweep.write_results(experiment, runs, sweep.gather(runs, SWEEP_DIR), SWEEP_DIR)
    with open(os.path.join(SWEEP_DIR, "FABRICATED_DEMO.txt"), "w") as f:
        f.write(FABRICATED + "\n")
    print(f"{FABRICATED}:\n{SWEEP_DIR}:", *sorted(os.listdir(SWEEP_DIR)))

# %% [markdown]
# ## The sweep
#
# `results.json` as the sweep wrote it: the experiment, its claim, the option the arms differ in, the
# reference arm and what the claim expects of the others (`+1`: better than the reference, `-1`: worse,
# `0`: no difference, per arm or per metric pattern), and each run's status (`done`, `failed`: see its
# `sweep_error.txt`, or `pending`). Statistics cover the finished runs.

# %%
results_json = os.path.join(SWEEP_DIR, "results.json")
if not os.path.exists(results_json):
    raise FileNotFoundError(f"{results_json} not found: run a sweep first (python -m vlm_jax.experiments.sweep "
                            "--config=experiments/<name>.py --workdir=SWEEP_DIR), or set SMOKE = True for a demo")
with open(results_json) as f:
    sweep_results = json.load(f)
summary = sweep_results["summary"]  # results.summarise of the finished runs
ARM, REFERENCE, METRICS = sweep_results["arm"], summary["reference"], sweep_results["metrics"]
print(f"experiment {sweep_results['experiment']} ({sweep_results['config']}{':' if sweep_results['arg'] else ''}"
      f"{sweep_results['arg']})")
print(f"claim: {sweep_results['claim']}")
print(f"arms: {ARM} = {', '.join(summary['arms'])} (reference {REFERENCE}); expected: {sweep_results['expected']}")
for run in sweep_results["runs"]:
    print(f"  {run['name']:<28s} {run['status']}")

# %% [markdown]
# ## Per arm and metric
#
# One row per metric and arm: the number of finished seeds, the mean over seeds +- the sample standard
# deviation, every seed's value, and for each arm but the reference its difference to the reference (arm -
# reference) with the 95% interval, `paired` over seeds when both arms ran the same seeds, else `welch`
# (`results.difference`). Then what the claim expects of that arm on that metric and the sweep's verdict:
# whether the interval excludes 0 and, if so, whether the measured direction agrees with the claim's. Times,
# losses and error rates are better when lower. Written to `WORKDIR/table.md` and, as plain numbers,
# `WORKDIR/table.csv`.

# %%
EXPECTS = {1: "better", -1: "worse", 0: "no difference", None: "-"}
header = ["metric", ARM, "n", "mean +- std", "seeds", "arm - reference [95%]", "method", "claim expects",
          "verdict"]
md_rows, csv_rows = [], []
for metric in METRICS:
    m = summary["metrics"][metric]
    for arm in summary["arms"]:
        s = m["arms"][arm]
        seeds = " ".join(results.fmt(v) for v in s["seeds"].values())
        d = m["differences"].get(arm)  # None for the reference arm, and for all when the reference has no run
        if d is None:
            diff, method, expects, verdict = "(reference)" if arm == REFERENCE else "no reference run", "", "", ""
        else:
            diff = results.Interval(**{k: d[k] for k in ("value", "low", "high", "n", "df", "method")}).format()
            method, expects, verdict = d["method"], EXPECTS[d["expected"]], d["verdict"]
        md_rows.append([metric, arm, str(s["n"]), f"{results.fmt(s['mean'])} +- {results.fmt(s['std'])}", seeds,
                        diff, method, expects, verdict])
        csv_rows.append({"metric": metric, "arm": arm, "is_reference": arm == REFERENCE, "n": s["n"],
                         "mean": s["mean"], "std": s["std"],
                         "seeds": " ".join(f"{k}:{v}" for k, v in s["seeds"].items()),
                         "difference": d["value"] if d else "", "low": d["low"] if d else "",
                         "high": d["high"] if d else "", "method": method, "expected": d["expected"] if d else "",
                         "verdict": verdict})
table_md = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in md_rows)])
os.makedirs(WORKDIR, exist_ok=True)
with open(os.path.join(WORKDIR, "table.md"), "w") as f:
    f.write(f"# {sweep_results['experiment']}\n\n**Claim.** {sweep_results['claim']}\n\n{table_md}\n")
with open(os.path.join(WORKDIR, "table.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["metric", "arm", "is_reference", "n", "mean", "std", "seeds", "difference",
                                            "low", "high", "method", "expected", "verdict"])
    writer.writeheader()
    writer.writerows(csv_rows)
display(Markdown(f"**Claim.** {sweep_results['claim']}\n\n{table_md}"))

# %% [markdown]
# ## The plots
#
# The sweep's plot of each metric, drawn again here by its own function (`plots.plot_metric`) from
# `results.json` into `WORKDIR/plots/`: each arm's mean over seeds with a +- std error bar (the reference arm
# in orange), every seed as a grey dot, and the constant-answer baseline (the runs' mean, where they recorded
# one) as a dashed line. The same files are in `SWEEP_DIR/plots/`. A SMOKE run heads its titles "FABRICATED DEMO
# NUMBERS".

# %%
os.makedirs(os.path.join(WORKDIR, "plots"), exist_ok=True)
label = "FABRICATED DEMO NUMBERS\n" if SMOKE else ""
done = [r for r in sweep_results["runs"] if r["status"] == "done"]
for metric in METRICS:
    base = [r["scores"][f"{metric}/baseline"] for r in done if r["scores"].get(f"{metric}/baseline") is not None]
    png = plots.plot_metric(summary["metrics"][metric], summary["arms"], metric=label + metric, arm_key=ARM,
                            reference=REFERENCE, path=os.path.join(WORKDIR, "plots", plots.file_name(metric)),
                            baseline=sum(base) / len(base) if base else None)
    display(Image(str(png)))

# %% [markdown]
# ## The sweep's report
#
# `results.md` as the sweep wrote it (`results.render_markdown`): the claim, the scores per arm, the
# differences to the reference, one verdict sentence per arm and metric, and every run's scores.

# %%
with open(os.path.join(SWEEP_DIR, "results.md")) as f:
    display(Markdown(f.read().split("\n## Plots\n")[0]))  # its plots are the ones above
