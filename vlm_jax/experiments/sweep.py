"""python -m vlm_jax.experiments.sweep --config=experiments/<name>.py[:ARG] [--workdir=runs/sweeps/<name>]
    [--smoke] [--only=GLOB[,GLOB...]] [--dry_run]

Runs every run of an experiment file (`vlm_jax/experiments/spec.py`) one after another in this process,
each in `<workdir>/<run name>/` through `train_and_evaluate`, then the file's extra evaluations and
measurements, and gathers the finished runs into

    <workdir>/results.json       every run's options and scores, and the per-arm statistics
    <workdir>/results.md         the claim, mean +- std per arm, differences to the reference arm with
                                 95% intervals, a verdict per arm and metric (`results.py`)
    <workdir>/plots/<metric>.png arm means with error bars, seeds as dots (`plots.py`)

Rerunning is safe: a run whose training finished is not trained again (its missing extra evaluations
are added), an interrupted one resumes from its last checkpoint, and a run directory that holds a run
of another config stops the sweep rather than mixing results. `--only` runs just the runs whose names
match a glob (e.g. `--only='*seed-0'`); results still gather every finished run. `--dry_run` checks
every run's config and lists the runs with their state, training nothing. `--smoke` passes
`smoke=True` to the file (a couple of runs of a few steps, a handful of eval items) and works in
`<workdir>/smoke/`. A failing run is recorded in its `sweep_error.txt`, the others go on, and the
exit status is 1. Relative paths are taken from the working directory (the experiment file also
from the repository root).
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import ml_collections as mlc
from absl import flags

from vlm_jax import cli
from vlm_jax.experiments import measure, plots, results, spec
from vlm_jax.experiments.spec import Experiment, Run, load_experiment

CONFIG_FILE = "sweep_config.json"  # the run's config, to refuse mixing two configs in one run directory
RECORD_FILE = "sweep_run.json"  # the run's options and scores, written when it is complete
MEASURE_FILE = "sweep_measure.json"  # the experiment's `measure` output (cached)
ERROR_FILE = "sweep_error.txt"

FLAGS = flags.FlagValues()
flags.DEFINE_string("config", None, "experiment file, optionally with its arg: experiments/<name>.py[:ARG]",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "sweep directory (default: runs/sweeps/<name>)", flag_values=FLAGS)
flags.DEFINE_bool("smoke", False, "a couple of tiny runs end to end (in <workdir>/smoke)", flag_values=FLAGS)
flags.DEFINE_string("only", None, "comma-separated globs of run names to run", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "check the configs and list the runs; train nothing", flag_values=FLAGS)
flags.mark_flag_as_required("config", flag_values=FLAGS)


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, exports and evaluates one run (the seam tests replace): the train loop, or the post-training
    loop of a post-training config (`spec.is_posttrain`), which writes the same final/, eval/results.json and
    summary.json."""
    if spec.is_posttrain(config):
        from vlm_jax.posttrain import distill, rl

        return (rl if config.method == "rl" else distill).run(config, workdir)
    from vlm_jax.train.loop import train_and_evaluate

    return train_and_evaluate(config, workdir)


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def _config_json(config: mlc.ConfigDict) -> Any:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def check_run_dir(run_dir: str, config: mlc.ConfigDict) -> None:
    """ValueError when `run_dir` holds a run of another config."""
    saved = _read_json(os.path.join(run_dir, CONFIG_FILE))
    if saved is not None and saved["config"] != _config_json(config):
        raise ValueError(f"{run_dir} holds a run of another config (see its {CONFIG_FILE}); delete it or give "
                         "another --workdir")


def trained(run_dir: str, config: mlc.ConfigDict) -> bool:
    """Whether the run's training finished: exported params and, when the config evaluates, its results."""
    summary = _read_json(os.path.join(run_dir, "summary.json")) or {}
    evaluated = not config.eval.tasks or os.path.exists(os.path.join(run_dir, "eval", "results.json"))
    return bool(summary.get("final_params")) and evaluated


def run_state(run_dir: str, config: mlc.ConfigDict) -> str:
    """'conflict' (the directory holds a run of another config), 'done' (trained and recorded), 'trained'
    (extra evaluations or the record missing), 'partial' (started: checkpoints or logs exist), 'new'."""
    try:
        check_run_dir(run_dir, config)
    except ValueError:
        return "conflict"
    if trained(run_dir, config):
        return "done" if os.path.exists(os.path.join(run_dir, RECORD_FILE)) else "trained"
    started = any(os.path.exists(os.path.join(run_dir, f)) for f in ("checkpoints", "metrics.jsonl"))
    return "partial" if started else "new"


def execute(exp: Experiment, run: Run, config: mlc.ConfigDict, run_dir: str) -> dict[str, Any]:
    """Brings one run to completion (training only if not finished, then the missing extra evaluations and
    measurements) and returns its record {name, options, arg, arm, seed, run_dir, scores}."""
    os.makedirs(run_dir, exist_ok=True)
    check_run_dir(run_dir, config)
    _write_json(os.path.join(run_dir, CONFIG_FILE), {"arg": run.arg, "config": _config_json(config)})
    if not trained(run_dir, config):
        train(config, run_dir)
    evals = exp.evals()
    for name, eval_spec in evals.items():
        measure.extra_eval(config, run_dir, name, eval_spec)
    extra = _read_json(os.path.join(run_dir, MEASURE_FILE))
    if extra is None:
        extra = {k: float(v) for k, v in exp.measure(run, config, run_dir).items()}
        _write_json(os.path.join(run_dir, MEASURE_FILE), extra)
    scores = {**measure.run_scores(run_dir, tuple(evals)), **extra}
    record = {"name": run.name, "options": run.options, "arg": run.arg, "arm": run.arm, "seed": run.seed,
              "run_dir": run_dir, "scores": scores}
    _write_json(os.path.join(run_dir, RECORD_FILE), record)
    error = os.path.join(run_dir, ERROR_FILE)
    if os.path.exists(error):
        os.remove(error)
    return record


def gather(runs: Sequence[Run], out_dir: str) -> list[dict[str, Any]]:
    """The records of the runs that are complete, in sweep order."""
    records = [_read_json(os.path.join(out_dir, r.name, RECORD_FILE)) for r in runs]
    return [r for r in records if r is not None]


def write_results(exp: Experiment, runs: Sequence[Run], records: Sequence[dict[str, Any]], out_dir: str
                  ) -> dict[str, str]:
    """Writes results.json, results.md and plots/<metric>.png from the finished runs' records; returns the paths."""
    metrics = exp.metrics()
    reference = exp.reference
    summary = results.summarise(records, metrics, reference, exp.expected)
    status = {r["name"]: "done" for r in records}
    for run in runs:
        if run.name not in status:
            failed = os.path.exists(os.path.join(out_dir, run.name, ERROR_FILE))
            status[run.name] = "failed" if failed else "pending"
    plot_dir = os.path.join(out_dir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    pngs = {}
    for m in metrics:
        base = [r["scores"].get(f"{m}/baseline") for r in records]
        base = [b for b in base if b is not None]
        path = os.path.join(plot_dir, plots.file_name(m))
        plots.plot_metric(summary["metrics"][m], summary["arms"], metric=m, arm_key=exp.arm_key, reference=reference,
                          path=path, baseline=sum(base) / len(base) if base else None)
        pngs[m] = path
    # Held-out curves of runs that evaluated during training: each run's log read once.
    families = {m: m.split("/")[1] for m in metrics if m.startswith(f"{measure.HELDOUT}/") and m.count("/") == 1}
    run_curves = [measure.eval_curves(r["run_dir"], list(families.values())) for r in records] if families else []
    for m, family in families.items():
        curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
        for r, points in zip(records, run_curves):
            if len(points[family]) >= 2:
                curves.setdefault(r["arm"], {})[r["seed"]] = points[family]
        if curves:
            path = os.path.join(plot_dir, "curve_" + plots.file_name(m))
            plots.plot_curves(curves, metric=m, arm_key=exp.arm_key, path=path)
            pngs[f"{m} during training"] = path
    notes = [f"config: `{exp.path.name}{':' + exp.arg if exp.arg else ''}`; run directories under `{out_dir}`"]
    pending = [n for n, s in status.items() if s != "done"]
    if pending:
        notes.append(f"not finished: {', '.join(f'{n} ({status[n]})' for n in pending)}")
    md = results.render_markdown(summary, title=exp.name, claim=exp.claim, arm_key=exp.arm_key, records=records,
                                 total_runs=len(runs), notes=notes)
    md += "\n## Plots\n\n" + "".join(f"![{m}](plots/{os.path.basename(p)})\n" for m, p in pngs.items())
    out = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md")}
    _write_json(out["json"], {
        "experiment": exp.name, "config": str(exp.path), "arg": exp.arg, "claim": exp.claim, "arm": exp.arm_key,
        "reference": reference, "expected": exp.expected, "metrics": metrics,
        "runs": [{"name": r.name, "options": r.options, "arg": r.arg, "arm": r.arm, "seed": r.seed,
                  "status": status[r.name],
                  "scores": next((x["scores"] for x in records if x["name"] == r.name), None)} for r in runs],
        "summary": summary})
    with open(out["md"], "w") as f:
        f.write(md)
    return {**out, "plots": plot_dir}


def check_batches(config: mlc.ConfigDict, num_samples: int = 16) -> None:
    """ValueError when a packed training batch of `config` does not fit its model (placeholder tokens vs
    the visual tokens the model makes of the batch's grids, patch sizes): caught before hours of runs
    rather than by a silently misaligned train step or a failed evaluation. Post-training configs build
    their prompts in the loop; their validation checks the processor against the model."""
    if spec.is_posttrain(config):
        return
    from vlm_jax.configs import experiment
    from vlm_jax.model.vlm import check_visual_inputs
    from vlm_jax.train import data as data_lib

    batch = data_lib.first_batches(config.data, num_samples, seed=config.train.seed)[0]
    try:
        check_visual_inputs(experiment.model_config(config), batch["input_ids"], batch["pixel_values"],
                            batch["grid_thw"])
    except ValueError as e:
        raise ValueError(f"the data pipeline's batches do not fit the model: {e}") from e


def select(runs: Sequence[Run], only: str | None) -> list[Run]:
    """The runs whose names match one of the comma-separated globs `only` (all when None)."""
    if not only:
        return list(runs)
    globs = [g.strip() for g in only.split(",") if g.strip()]
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, g) for g in globs)]
    if not chosen:
        raise ValueError(f"--only={only!r} matches no run; runs: {', '.join(r.name for r in runs)}")
    return chosen


def check_runs(exp: Experiment, runs: Sequence[Run], chosen: Sequence[Run], out_dir: str, *, dry_run: bool
               ) -> dict[str, mlc.ConfigDict]:
    """Every run's config (validated, with its extra evaluations), one packed batch per chosen arm against
    its model (`check_batches`) and, unless dry_run, the chosen runs' directories: all before anything
    trains, so a bad run fails now rather than after hours of others. Returns {run name: config}."""
    configs = {r.name: exp.config(r) for r in runs}
    evals = exp.evals()
    for r in runs:
        for name, eval_spec in evals.items():
            try:
                measure.eval_spec(configs[r.name], eval_spec, name)
            except ValueError as e:
                raise ValueError(f"run {r.name}: {e}") from e
    first_of_arm: dict[str, Run] = {}
    for r in chosen:  # one run per arm: seeds change no shapes
        first_of_arm.setdefault(r.arm, r)
    bad = []
    for r in first_of_arm.values():
        try:
            check_batches(configs[r.name])
        except ValueError as e:
            bad.append(f"run {r.name} (and its arm's other seeds): {e}")
    if bad:
        raise ValueError("; ".join(bad))
    if not dry_run:
        for r in chosen:
            check_run_dir(os.path.join(out_dir, r.name), configs[r.name])
    return configs


def run_sweep(exp: Experiment, workdir: str, *, only: str | None = None, dry_run: bool = False,
              smoke: bool = False) -> int:
    """Runs (or, with dry_run, lists) the experiment's runs in `workdir` and writes the results; returns
    the exit status (1 when a run failed)."""
    out_dir = os.path.abspath(os.path.join(workdir, "smoke") if smoke else workdir)
    runs = exp.runs()
    reference = exp.reference
    chosen = select(runs, only)
    configs = check_runs(exp, runs, chosen, out_dir, dry_run=dry_run)
    print(f"{exp.name}: {len(runs)} runs ({len(chosen)} selected), arm {exp.arm_key!r} (reference "
          f"{reference}), metrics {', '.join(exp.metrics())}; in {out_dir}", flush=True)
    if dry_run:
        width = max(len(r.name) for r in runs)
        for r in runs:
            c = configs[r.name]
            print(f"{'*' if r in chosen else ' '} {r.name:<{width}}  {run_state(os.path.join(out_dir, r.name), c):<8} "
                  f"{spec.length(c)}  arg={r.arg}")
        return 0
    failed = []
    for i, run in enumerate(chosen):
        run_dir = os.path.join(out_dir, run.name)
        print(f"\n=== run {i + 1}/{len(chosen)}: {run.name} ({run_state(run_dir, configs[run.name])}) ===", flush=True)
        try:
            execute(exp, run, configs[run.name], run_dir)
        except Exception:  # one failed run must not lose the others; its traceback is kept in its directory
            failed.append(run.name)
            text = traceback.format_exc()
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, ERROR_FILE), "w") as f:
                f.write(text)
            print(f"run {run.name} failed:\n{text}", file=sys.stderr, flush=True)
        finally:
            if "jax" in sys.modules:
                sys.modules["jax"].clear_caches()  # drop the finished run's compiled programs
    paths = write_results(exp, runs, gather(runs, out_dir), out_dir)
    with open(paths["md"]) as f:
        print("\n" + f.read(), flush=True)
    print(f"wrote {paths['json']}, {paths['md']} and {paths['plots']}/", flush=True)
    if failed:
        print(f"failed runs ({len(failed)}): {', '.join(failed)}; see their {ERROR_FILE}", file=sys.stderr)
        return 1
    return 0


def run(args: flags.FlagValues) -> int:
    """The sweep of the parsed flags `args` (`FLAGS`); returns the exit status."""
    exp = load_experiment(args.config, smoke=args.smoke)
    workdir = args.workdir or os.path.join("runs", "sweeps", exp.name)
    return run_sweep(exp, workdir, only=args.only, dry_run=args.dry_run, smoke=args.smoke)


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep CLI on `argv` (without the program name); returns the exit status."""
    return cli.run(FLAGS, lambda: run(FLAGS), argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
