"""Ablation sweeps (`vlm_jax.experiments`): the statistics on hand-computed numbers, the arg parser, run
naming / skipping / resuming with a fake trainer, every experiment file's runs and configs, and real
`--smoke` sweeps of each experiment file (slow: see SMOKES)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from vlm_jax.configs import args as args_lib
from vlm_jax.configs import recipe
from vlm_jax.experiments import measure, results, spec, sweep

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("ablate_*.py"))
T975 = {2: 4.303, 4: 2.776}  # Student t 97.5% quantiles from a printed table


# ----------------------------------------------------------------------------- statistics


def test_mean_std_uses_the_sample_std():
    assert results.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = results.mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)


def test_t_quantiles_match_the_table():
    for df, t in T975.items():
        assert results.t_quantile(df) == pytest.approx(t, abs=1e-3)


def test_paired_interval_by_hand():
    # d = (1, 2, 3): mean 2, sd 1, half width t(0.975, 2) * 1 / sqrt(3) = 4.303 / 1.732 = 2.484.
    d = results.paired_interval([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
    assert (d.value, d.n, d.df, d.method) == (2.0, 3, 2.0, "paired")
    assert d.low == pytest.approx(2 - 2.484, abs=1e-3) and d.high == pytest.approx(2 + 2.484, abs=1e-3)
    assert d.contains_zero()


def test_welch_interval_by_hand():
    # arm (5, 7), reference (0, 2): difference 5; each variance 2 over n 2 = 1, se = sqrt(2);
    # df = (1 + 1)^2 / (1^2 / 1 + 1^2 / 1) = 2; half width 4.303 * 1.414 = 6.085.
    d = results.welch_interval([5.0, 7.0], [0.0, 2.0])
    assert (d.value, d.n, d.method) == (5.0, 4, "welch") and d.df == pytest.approx(2.0)
    assert d.low == pytest.approx(5 - 6.085, abs=1e-3) and d.high == pytest.approx(5 + 6.085, abs=1e-3)


def test_pairing_by_seed_removes_what_seeds_share():
    ref = {0: 0.2, 1: 0.5, 2: 0.8}
    arm = {0: 0.3, 1: 0.6, 2: 0.9}  # +0.1 on every seed, seeds spread 0.3 apart
    paired = results.difference(arm, ref)
    assert paired.method == "paired" and paired.value == pytest.approx(0.1)
    assert paired.low == pytest.approx(0.1) and not paired.contains_zero()
    # Different seeds: unpaired, Welch; the seeds' spread now hides the 0.1.
    unpaired = results.difference({3: 0.3, 4: 0.6, 5: 0.9}, ref)
    assert unpaired.method == "welch" and unpaired.contains_zero()
    # A side with one seed: no interval.
    one = results.difference({0: 0.3}, {0: 0.2})
    assert one.method == "n/a" and not one.defined and one.value == pytest.approx(0.1)


def test_direction_and_verdicts():
    assert results.higher_is_better("heldout/counting")
    assert not results.higher_is_better("vit/forward_ms") and not results.higher_is_better("train/step_seconds")
    above = results.Interval(0.1, 0.05, 0.15, 3, 2.0, "paired")
    below = results.Interval(-0.1, -0.15, -0.05, 3, 2.0, "paired")
    straddle = results.Interval(0.1, -0.05, 0.25, 3, 2.0, "paired")
    assert results.verdict(above, +1).endswith("agrees with the claim.")
    assert results.verdict(below, +1).endswith("contradicts the claim.")
    assert results.verdict(below, +1, higher_better=False).endswith("agrees with the claim.")  # faster
    assert "contains 0" in results.verdict(straddle, +1)
    assert "consistent with the claim of none" in results.verdict(straddle, 0)
    assert "disagrees with the claim" in results.verdict(above, 0)
    assert "no direction" in results.verdict(above, None)
    expected = {"b": {"long*": +1}, "c": -1}
    assert results.expected_sign(expected, "b", "long16/temporal") == 1
    assert results.expected_sign(expected, "b", "heldout/temporal") is None
    assert results.expected_sign(expected, "c", "anything") == -1 and results.expected_sign(expected, "d", "x") is None


def _records(values):
    """{arm: [score of seed 0, 1, ...]} -> run records."""
    return [{"name": f"{arm}-{seed}", "arm": arm, "seed": seed, "scores": {"m/acc": v, "m/x_ms": 10.0 * seed}}
            for arm, vs in values.items() for seed, v in enumerate(vs)]


def test_summary_and_markdown_by_hand():
    records = _records({"b": [0.8, 0.9, 1.0], "a": [0.6, 0.7, 0.8]})
    s = results.summarise(records, ["m/acc"], reference="a", expected={"b": 1})
    assert s["arms"] == ["a", "b"]  # the reference first
    a, b = s["metrics"]["m/acc"]["arms"]["a"], s["metrics"]["m/acc"]["arms"]["b"]
    assert a["mean"] == pytest.approx(0.7) and a["std"] == pytest.approx(0.1) and a["n"] == 3
    assert b["mean"] == pytest.approx(0.9) and b["seeds"] == {0: 0.8, 1: 0.9, 2: 1.0}
    d = s["metrics"]["m/acc"]["differences"]["b"]
    # Every seed +0.2: a paired interval of zero width, clear of 0.
    assert d["method"] == "paired" and d["value"] == pytest.approx(0.2) and d["low"] == pytest.approx(0.2)
    assert d["expected"] == 1 and d["verdict"].endswith("agrees with the claim.")
    md = results.render_markdown(s, title="t", claim="B beats A.", arm_key="arm", records=records, total_runs=7)
    assert "**Claim.** B beats A." in md and "6 of 7 runs finished" in md
    assert "| a (reference) | 3 | 0.700 +- 0.100 |" in md and "| b | 3 | 0.900 +- 0.100 |" in md
    assert "| b | +0.200 [+0.200, +0.200] paired |" in md
    assert "- `arm=b`, m/acc: +0.200 [+0.200, +0.200] (paired, n=3): better than the reference" in md


def test_summary_without_the_reference_and_with_gaps():
    records = _records({"b": [0.8, 0.9]})
    records[1]["scores"]["m/acc"] = None  # a family the run did not score
    s = results.summarise(records, ["m/acc"], reference="a")
    assert s["arms"] == ["b"] and s["metrics"]["m/acc"]["arms"]["b"]["n"] == 1
    assert s["metrics"]["m/acc"]["differences"] == {}
    md = results.render_markdown(s, title="t", claim="c", arm_key="arm", records=records, total_runs=4)
    assert "No finished run of the reference arm `arm=a`" in md
    with pytest.raises(ValueError, match="two runs of arm 'b' with seed 0"):
        results.summarise(records + records[:1], ["m/acc"], reference="a")


# ----------------------------------------------------------------------------- arg strings


def test_parse_arg_types_and_errors():
    a = args_lib.parse_arg("flag=False,n=3, lr=1e-3,name=x", flag=True, n=1, lr=0.1, name="y", other=None)
    assert a == {"flag": False, "n": 3, "lr": 1e-3, "name": "x", "other": None}
    assert args_lib.parse_arg(None, n=1) == {"n": 1}
    assert args_lib.parse_arg("8b", bare="size", size="tiny") == {"size": "8b"}
    for arg, msg in [("n=1.5", "expected an int"), ("flag=yes", "expected True or False"), ("m=1", "unknown key 'm'"),
                     ("n=1,n=2", "given twice"), ("3", "not key=value"), ("lr=fast", "expected a number")]:
        with pytest.raises(ValueError, match=msg):
            args_lib.parse_arg(arg, n=1, flag=True, lr=0.1)
    with pytest.raises(ValueError, match="only the first item may be a bare size"):
        args_lib.parse_arg("n=1,8b", bare="size", size="tiny", n=0)


def test_format_arg_round_trips():
    options = {"deepstack": False, "seed": 2, "lr": 0.5, "merger": "resampler64"}
    text = args_lib.format_arg(options)
    assert text == "deepstack=False,seed=2,lr=0.5,merger=resampler64"
    assert args_lib.parse_arg(text, deepstack=True, seed=0, lr=1.0, merger="mlp") == options
    with pytest.raises(ValueError, match="may not be empty, hold ','"):
        args_lib.format_arg({"tasks": "a,b"})


def test_recipe_parse_arg_keeps_its_behaviour():
    assert recipe.parse_arg("2b") == {"size": "2b", "scale": "full", "thinking": False}
    assert recipe.parse_arg("scale=tiny,thinking=1") == {"size": "8b", "scale": "tiny", "thinking": True}
    with pytest.raises(ValueError, match=r"recipe config arg 'size=8b,colour=red': unknown key 'colour' "
                                         r"\(expected size, scale, thinking\)"):
        recipe.parse_arg("size=8b,colour=red")
    with pytest.raises(ValueError, match=r"recipe config arg thinking='maybe': expected True or False"):
        recipe.parse_arg("thinking=maybe")


# ----------------------------------------------------------------------------- the launcher, with a fake trainer

FAKE_EXPERIMENT = '''
"""A fake experiment for the launcher tests: two arms, three seeds."""
from vlm_jax.configs import synthetic_tiny
from vlm_jax.experiments import common

CLAIM = "Arm b beats arm a."
ARM = "arm"
REFERENCE = "a"
EXPECTED = {"b": +1}


def _arg(arg):
    return common.parse(arg, arm="a")


def get_config(arg=None):
    a = _arg(arg)
    c = synthetic_tiny.get_config()
    c.stage = "fake"
    c.model.deepstack = a["arm"] == "a"
    return common.finish(c, a)


def sweep(add, arg=None):
    for seed in common.seeds(_arg(arg)):
        for arm in ("a", "b"):
            add(arm=arm, seed=seed)


def metrics(arg=None):
    return ["heldout/counting", "train/final_loss"]
'''


class FakeTrainer:
    """Writes what `train_and_evaluate` leaves in a workdir: counting 0.5 (+0.1 for arm b, +0.01 per seed).
    `fail`: run names whose first attempt stops half-way (a checkpoint, then an error)."""

    def __init__(self, fail=()):
        self.calls: list[str] = []
        self.fail = set(fail)

    def __call__(self, config, workdir):
        name = os.path.basename(workdir)
        self.calls.append(name)
        os.makedirs(os.path.join(workdir, "checkpoints", "1"), exist_ok=True)
        if name in self.fail:
            self.fail.discard(name)
            raise RuntimeError(f"interrupted {name}")
        score = 0.5 + 0.1 * (not config.model.deepstack) + 0.01 * config.train.seed
        with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "loss": 1.0, "step_seconds": 0.5}) + "\n")
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump({"final_params": os.path.join(workdir, "final"), "final_loss": 1.0 - score,
                       "train_seconds": 3.0}, f)
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
            json.dump({"tasks": {"counting": {"exact": score, "n": 10, "malformed": 0, "ci95": [0, 1],
                                              "interval": "wilson", "baseline": 0.3}}}, f)
        return {"steps": 1}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    path = tmp_path / "fake_experiment.py"
    path.write_text(FAKE_EXPERIMENT)
    trainer = FakeTrainer()
    monkeypatch.setattr(sweep, "train", trainer)
    monkeypatch.setattr(sweep, "check_batches", lambda config: None)  # renders batches: tested on its own
    return str(path), str(tmp_path / "sweep"), trainer


def test_run_names_and_config_args():
    assert spec.run_name({"deepstack": False, "seed": 1}) == "deepstack-False_seed-1"
    assert spec.run_name({"world": "a b/c", "seed": 0}) == "world-a-b-c_seed-0"
    assert spec.split_config_arg("experiments/x.py:a=1,b=2") == ("experiments/x.py", "a=1,b=2")
    assert spec.split_config_arg("experiments/x.py") == ("experiments/x.py", "")


def test_sweep_trains_each_run_once_then_skips(fake, capsys):
    config, workdir, trainer = fake
    assert sweep.main([f"--config={config}", f"--workdir={workdir}"]) == 0
    names = [f"arm-{arm}_seed-{s}" for s in range(3) for arm in "ab"]
    assert trainer.calls == names
    out = json.loads(Path(workdir, "results.json").read_text())
    assert [r["name"] for r in out["runs"]] == names and {r["status"] for r in out["runs"]} == {"done"}
    assert out["runs"][1]["options"] == {"arm": "b", "seed": 0} and out["runs"][1]["arg"] == "arm=b,seed=0"
    assert out["runs"][1]["scores"]["heldout/counting"] == pytest.approx(0.6)
    assert out["runs"][1]["scores"]["heldout/counting/baseline"] == 0.3
    diff = out["summary"]["metrics"]["heldout/counting"]["differences"]["b"]
    assert diff["method"] == "paired" and diff["value"] == pytest.approx(0.1)
    md = Path(workdir, "results.md").read_text()
    assert md.startswith("# fake_experiment\n\n**Claim.** Arm b beats arm a.")
    assert "better than the reference (the 95% interval excludes 0): agrees with the claim." in md
    for png in ("heldout_counting.png", "train_final_loss.png"):
        assert Path(workdir, "plots", png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    trainer.calls.clear()
    assert sweep.main([f"--config={config}", f"--workdir={workdir}"]) == 0
    assert trainer.calls == []  # finished runs are not trained again
    assert "6 of 6 runs finished" in capsys.readouterr().out


def test_interrupted_run_is_recorded_and_resumed(fake, capsys):
    config, workdir, trainer = fake
    trainer.fail = {"arm-b_seed-1"}
    assert sweep.main([f"--config={config}", f"--workdir={workdir}"]) == 1  # the others still ran
    assert len(trainer.calls) == 6
    run_dir = Path(workdir, "arm-b_seed-1")
    assert "RuntimeError: interrupted arm-b_seed-1" in (run_dir / sweep.ERROR_FILE).read_text()
    out = json.loads(Path(workdir, "results.json").read_text())
    assert {r["name"]: r["status"] for r in out["runs"]}["arm-b_seed-1"] == "failed"
    assert "5 of 6 runs finished" in Path(workdir, "results.md").read_text()
    capsys.readouterr()

    assert sweep.main([f"--config={config}", f"--workdir={workdir}", "--dry_run"]) == 0
    listing = capsys.readouterr().out
    assert "arm-b_seed-1  partial" in listing and "arm-a_seed-0  done" in listing

    trainer.calls.clear()
    assert sweep.main([f"--config={config}", f"--workdir={workdir}"]) == 0
    assert trainer.calls == ["arm-b_seed-1"]  # only the interrupted run, in its own directory
    assert not (run_dir / sweep.ERROR_FILE).exists()


def test_only_dry_run_smoke_and_conflicts(fake, capsys):
    config, workdir, trainer = fake
    assert sweep.main([f"--config={config}", f"--workdir={workdir}", "--dry_run"]) == 0
    listing = capsys.readouterr().out
    assert trainer.calls == [] and listing.count(" new ") == 6 and "arg=arm=b,seed=2" in listing

    assert sweep.main([f"--config={config}", f"--workdir={workdir}", "--only=*seed-0,arm-a_seed-2"]) == 0
    assert trainer.calls == ["arm-a_seed-0", "arm-b_seed-0", "arm-a_seed-2"]
    out = json.loads(Path(workdir, "results.json").read_text())
    assert [r["status"] for r in out["runs"]].count("pending") == 3

    # The same run names with another config (here: a seed count changes nothing, steps do) must not mix.
    assert sweep.main([f"--config={config}:steps=5", f"--workdir={workdir}"]) == 2
    assert "holds a run of another config" in capsys.readouterr().err

    trainer.calls.clear()
    assert sweep.main([f"--config={config}", f"--workdir={workdir}", "--smoke"]) == 0
    assert trainer.calls == ["arm-a_seed-0", "arm-b_seed-0"]  # one seed; in <workdir>/smoke
    assert Path(workdir, "smoke", "results.md").exists()
    assert sweep.main([f"--config={config}", f"--workdir={workdir}", "--only=nothing*"]) == 2


def test_bad_experiment_files_fail_naming_the_problem(fake, capsys):
    config, workdir, _ = fake
    bad = Path(config).with_name("bad_experiment.py")
    bad.write_text(FAKE_EXPERIMENT.replace('REFERENCE = "a"', 'REFERENCE = "z"'))
    assert sweep.main([f"--config={bad}", f"--workdir={workdir}", "--dry_run"]) == 2
    assert "REFERENCE='z' is not an arm sweep() adds (a, b)" in capsys.readouterr().err
    bad.write_text(FAKE_EXPERIMENT.replace("            add(arm=arm, seed=seed)", "            add(arm=arm)"))
    assert sweep.main([f"--config={bad}", f"--workdir={workdir}", "--dry_run"]) == 2
    assert "without 'seed'" in capsys.readouterr().err
    bad.write_text("CLAIM = 'x'\n")
    assert sweep.main([f"--config={bad}", f"--workdir={workdir}"]) == 2
    assert "not an experiment file: it lacks ARM, get_config, sweep, metrics" in capsys.readouterr().err


def test_extra_eval_settings_are_checked():
    from vlm_jax.configs import synthetic_tiny

    c = synthetic_tiny.get_config()
    s = measure.eval_spec(c, {"world": {"video_frames": 16}, "tasks": ("temporal",), "num_per_task": 5}, "long")
    assert s["world"]["video_frames"] == 16 and s["world"]["max_objects"] == 3  # the training world, changed
    assert s["num_per_task"] == 5 and s["split"] == "eval" and s["vision_off"] is False
    for bad, msg in [({"frames": 3}, "unknown keys"), ({"tasks": ("nope",)}, "unknown eval task"),
                     ({"world": {"colour": 1}}, "colour"), ({"split": "train2"}, "train2")]:
        with pytest.raises(ValueError, match=msg):
            measure.eval_spec(c, bad, "x")


def test_batches_are_checked_against_the_model():
    exp = spec.load_experiment(str(REPO / "experiments" / "ablate_merger.py"), smoke=True)
    runs = {r.arm: r for r in exp.runs()}
    sweep.check_batches(exp.config(runs["mlp"]))
    # Every resampler arm fits: the pipeline places the model's query count per 1,024-patch image (here 64,
    # `merger=resampler64`), not the 2x2 merger's 256.
    c = exp.config(runs["resampler256"])
    c.model.resampler_num_queries = 64
    sweep.check_batches(c)
    # A batch its model cannot read is refused at launch: patches of another size than the model's.
    c.data.pipeline.processor.patch_size = 8
    with pytest.raises(ValueError, match="batches do not fit the model: pixel_values rows have 384 values"):
        sweep.check_batches(c)


def test_eval_scores_flatten_results():
    res = {"tasks": {"grounding": {"acc@iou0.5": 0.4, "n": 10, "mean_iou": 0.5, "ci95": [0.1, 0.7],
                                   "interval": "wilson", "vision_off": None}}}
    assert measure.eval_scores(res, "long") == {"long/grounding": 0.4, "long/grounding/n": 10.0,
                                                "long/grounding/mean_iou": 0.5, "long/grounding/vision_off": None}


# ----------------------------------------------------------------------------- the experiment files

ARM_OF = {  # how each file's arm shows in its config
    "ablate_deepstack": lambda c: c.model.deepstack,
    "ablate_mrope": lambda c: c.model.text.mrope_layout,
    "ablate_video_time": lambda c: c.model.video_time_encoding,
    "ablate_merger": lambda c: "mlp" if c.model.merger == "mlp" else f"resampler{c.model.resampler_num_queries}",
    "ablate_vit_window": lambda c: c.model.vision.attention,
    "ablate_loss_norm": lambda c: c.data.pipeline.loss_normalization,
}


def test_every_experiment_file_is_listed():
    assert sorted(p.stem for p in EXPERIMENTS) == sorted(ARM_OF) == sorted(SMOKES)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_sweeps_have_three_seeds_per_arm_and_valid_configs(path):
    exp = spec.load_experiment(str(path))
    runs = exp.runs()
    seeds: dict[str, set[int]] = {}
    for r in runs:
        seeds.setdefault(r.arm, set()).add(r.seed)
    assert len(seeds) >= 2 and all(len(s) >= 3 for s in seeds.values()), seeds
    assert len({frozenset(s) for s in seeds.values()}) == 1  # the same seeds in every arm: differences pair
    assert exp.reference in seeds and exp.claim and exp.metrics()
    assert set(exp.expected) <= set(seeds)
    steps = set()
    for r in runs:
        c = exp.config(r)  # validated
        assert str(ARM_OF[path.stem](c)) == r.arm and c.train.seed == r.seed
        steps.add(c.train.num_train_steps)
        for name, e in exp.evals().items():
            measure.eval_spec(c, e, name)
    assert len(steps) == 1 and steps.pop() >= 200  # one budget for every arm

    smoke = spec.load_experiment(str(path), smoke=True)
    small = smoke.runs()
    assert len(small) == 2 and len({r.arm for r in small}) == 2 and smoke.reference in {r.arm for r in small}
    c = smoke.config(small[0])
    assert c.train.num_train_steps == 3 and c.eval.num_per_task == 2


# ----------------------------------------------------------------------------- real smoke sweeps


def _smoke(path: Path, workdir: Path) -> dict:
    assert sweep.main([f"--config={path}", f"--workdir={workdir}", "--smoke"]) == 0
    out = json.loads((workdir / "smoke" / "results.json").read_text())
    assert [r["status"] for r in out["runs"]] == ["done", "done"]
    for r in out["runs"]:
        for m in out["metrics"]:
            assert m in r["scores"], (r["name"], m)
    md = (workdir / "smoke" / "results.md").read_text()
    assert out["claim"] in md and "## Differences" in md
    for m in out["metrics"]:
        png = workdir / "smoke" / "plots" / (m.replace("/", "_") + ".png")
        assert png.read_bytes()[:4] == b"\x89PNG"
    return out


# Real `--smoke` sweeps: 2 runs of 3 steps each, trained, exported and evaluated for real. One costs 90-150 s
# of CPU (each run ~55 s of XLA compilation and tracing, ~15 s of evaluation), over the 40 s this file's
# default part may take, so all six are slow: `pytest -m slow tests/test_sweep.py -k smoke_sweep`.
# Measured on the 2-core CPU, otherwise idle (test wall s; the CLI `--smoke`: wall s / CPU s):
SMOKES = [
    "ablate_deepstack",  # 90 s; CLI 61 s / 88 s
    "ablate_mrope",  # 117 s; CLI 84 s / 123 s
    "ablate_video_time",  # 104 s; CLI 77 s / 113 s
    "ablate_merger",  # 149 s; CLI 93 s / 151 s
    "ablate_vit_window",  # 95 s; CLI 68 s / 98 s
    "ablate_loss_norm",  # 88 s; CLI 64 s / 92 s
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKES)
def test_experiment_smoke_sweep_end_to_end(name, tmp_path):
    out = _smoke(REPO / "experiments" / f"{name}.py", tmp_path)
    assert len({r["arm"] for r in out["runs"]}) == 2
