"""An experiment file and its runs.

An experiment file (`experiments/ablate_*.py`) answers one question. It defines

    CLAIM = "..."                 the report's claim the sweep tests (printed above the results)
    ARM = "deepstack"             the option whose values are compared (one arm per value)
    REFERENCE = False             the arm the others are compared with (default: the first run's)
    EXPECTED = {True: +1}         optional: per arm, the sign the claim expects of arm - reference
                                  (+1 better, -1 worse, 0 no difference), or {metric glob: sign}
    def get_config(arg)           one run's experiment config (or post-training config: RL or
                                  distillation); arg: "deepstack=False,seed=1,..."
    def sweep(add, arg)           calls add(**options) once per run; seeds are an option ("seed")
    def metrics(arg)              the score names to tabulate and plot ("heldout/counting", ...)
    def evals(arg)                optional: extra held-out evaluations {name: {world, tasks, ...}}
                                  (`measure.EVAL_KEYS`)
    def measure(arg, config, run_dir)  optional: extra numbers of a finished run {name: value}
                                  (arg: the run's own arg)

Every function takes the command-line arg (after `file.py:`); `--smoke` appends `smoke=True`, so the
file's `parse_arg` needs a `smoke=False` default. A run's own arg is the command-line arg plus its
options, so `python -m vlm_jax.train --config=experiments/ablate_deepstack.py:deepstack=False,seed=1`
repeats one run by hand.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections as mlc

from vlm_jax.configs.args import format_arg

REQUIRED = ("CLAIM", "ARM", "get_config", "sweep", "metrics")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its directory name, the options `sweep` gave, its `get_config` arg, arm and seed."""

    name: str
    options: dict[str, Any]
    arg: str
    arm: str
    seed: int


def is_posttrain(config: mlc.ConfigDict) -> bool:
    """Whether `config` is a post-training config (`vlm_jax/configs/posttrain`: RL or distillation)."""
    return "method" in config


def length(config: mlc.ConfigDict) -> str:
    """A run's length for listings: train steps, or post-training iterations."""
    if is_posttrain(config):
        return f"iterations={config.iterations}"
    return f"steps={config.train.num_train_steps}"


def run_name(options: Mapping[str, Any]) -> str:
    """A directory name from a run's options: `{"deepstack": False, "seed": 1}` -> `deepstack-False_seed-1`."""
    if not options:
        raise ValueError("a run needs options (at least its seed)")
    return "_".join(f"{k}-{re.sub(r'[^A-Za-z0-9._+-]+', '-', str(v))}" for k, v in options.items())


def split_config_arg(value: str) -> tuple[str, str]:
    """`experiments/x.py:a=1,b=2` -> (`experiments/x.py`, `a=1,b=2`)."""
    path, sep, arg = value.partition(".py:")
    return (path + ".py", arg) if sep else (value, "")


def resolve_file(path: str) -> Path:
    """`path` relative to the working directory, else to the repository root; FileNotFoundError otherwise."""
    p = Path(path)
    for candidate in (p, REPO_ROOT / p) if not p.is_absolute() else (p,):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"experiment file not found: {path}")


@dataclasses.dataclass
class Experiment:
    """A loaded experiment file with the arg it runs with (see the module docstring)."""

    path: Path
    arg: str
    module: ModuleType

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def claim(self) -> str:
        return str(self.module.CLAIM)

    @property
    def arm_key(self) -> str:
        return str(self.module.ARM)

    @property
    def expected(self) -> dict[str, Any]:
        return {str(k): v for k, v in getattr(self.module, "EXPECTED", {}).items()}

    def runs(self) -> list[Run]:
        """The runs `sweep(add, arg)` adds, in order; each must set the arm option and an int seed."""
        runs: list[Run] = []

        def add(**options: Any) -> None:
            for key in (self.arm_key, "seed"):
                if key not in options:
                    raise ValueError(f"{self.path.name}: sweep() added {options} without {key!r}")
            if not isinstance(options["seed"], int) or isinstance(options["seed"], bool):
                raise ValueError(f"{self.path.name}: seed={options['seed']!r} must be an int")
            arg = ",".join(p for p in (self.arg, format_arg(options)) if p)
            runs.append(Run(run_name(options), dict(options), arg, str(options[self.arm_key]), options["seed"]))

        self.module.sweep(add, self.arg)
        if not runs:
            raise ValueError(f"{self.path.name}: sweep() added no runs")
        names = [r.name for r in runs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{self.path.name}: sweep() added these runs twice: {', '.join(twice)}")
        return runs

    @property
    def reference(self) -> str:
        """The reference arm (REFERENCE, else the first run's), one of the arms `sweep` adds."""
        runs = self.runs()
        ref = getattr(self.module, "REFERENCE", None)
        ref = str(ref) if ref is not None else runs[0].arm
        arms = list(dict.fromkeys(r.arm for r in runs))
        if ref not in arms:
            raise ValueError(f"{self.path.name}: REFERENCE={ref!r} is not an arm sweep() adds ({', '.join(arms)})")
        return ref

    def config(self, run: Run) -> mlc.ConfigDict:
        """The run's config (`get_config(run.arg)`): an experiment config, or a post-training one
        (`is_posttrain`), validated."""
        from vlm_jax.configs import experiment
        from vlm_jax.configs.posttrain import base as posttrain

        c = self.module.get_config(run.arg)
        (posttrain.validate if is_posttrain(c) else experiment.validate)(c)
        return c

    def metrics(self) -> list[str]:
        names = [str(m) for m in self.module.metrics(self.arg)]
        if not names:
            raise ValueError(f"{self.path.name}: metrics() names nothing to tabulate")
        return names

    def evals(self) -> dict[str, dict[str, Any]]:
        fn = getattr(self.module, "evals", None)
        return {str(k): dict(v) for k, v in (fn(self.arg) if fn else {}).items()}

    def measure(self, run: Run, config: mlc.ConfigDict, run_dir: str) -> dict[str, float]:
        fn = getattr(self.module, "measure", None)
        return dict(fn(run.arg, config, run_dir)) if fn else {}


def load_experiment(config: str, smoke: bool = False) -> Experiment:
    """The experiment of `--config=file.py[:arg]`, with `smoke=True` appended to the arg for `--smoke`."""
    path_text, arg = split_config_arg(config)
    path = resolve_file(path_text)
    spec = importlib.util.spec_from_file_location(f"vlm_jax_experiment_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [k for k in REQUIRED if not hasattr(module, k)]
    if missing:
        raise ValueError(f"{path.name} is not an experiment file: it lacks {', '.join(missing)} (see "
                         "vlm_jax/experiments/spec.py)")
    if smoke:
        arg = ",".join(p for p in (arg, "smoke=True") if p)
    return Experiment(path, arg, module)
