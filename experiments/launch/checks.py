"""Checks a launch makes before it starts anything, without an accelerator and without building the model.

    config = load_config("vlm_jax/configs/recipe/s1_multimodal.py:size=8b", ["--config.init_from=/mnt/s0"])
    mesh = check_launch(config, Launch(processes=8, devices_per_process=4, what="v5p-64"))

`load_config` parses the config file and its overrides as `python -m vlm_jax.train` will (ml_collections
config flags, locked: an unknown key fails) and validates it. `check_launch` then checks what only the
launch knows: the mesh of `config.train.parallel` covers exactly the launch's devices, the batch arrays
(per process, times the process count) divide over the mesh's batch axes, and the paths every host reads
are not relative to each host's own directory. Every failure is a ValueError naming the key and the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Sequence

import ml_collections as mlc
from absl import flags
from ml_collections import config_flags

from experiments.launch.command import OVERRIDE_PREFIX, check_overrides
from vlm_jax.configs import experiment
from vlm_jax.parallel.mesh import mesh_shape
from vlm_jax.parallel.rules import BATCH_AXES

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclasses.dataclass(frozen=True)
class Launch:
    """The devices a launch gives the run: `processes` (one per host or node) x `devices_per_process`."""

    processes: int
    devices_per_process: int
    what: str  # names the launch in messages, e.g. "v5p-64" or "4 nodes"

    @property
    def devices(self) -> int:
        return self.processes * self.devices_per_process

    def describe(self) -> str:
        return f"{self.what}: {self.processes} hosts x {self.devices_per_process} devices = {self.devices} devices"


def check_workdir(workdir: str) -> str:
    """The workdir of a multi-host run: an absolute path on a filesystem every host mounts."""
    if _URL.match(workdir):
        # The train loop writes with local file APIs (os.makedirs, open), which would treat a URL as a local path.
        raise ValueError(f"--workdir={workdir!r}: the train loop writes through the local filesystem; mount the "
                         "bucket on every host (e.g. gcsfuse) and give the mount's absolute path")
    if not os.path.isabs(workdir):
        raise ValueError(f"--workdir={workdir!r} is relative: each host would write its own copy; give an absolute "
                         "path on a filesystem shared by every host")
    return workdir


def load_config(config: str, overrides: Sequence[str]) -> mlc.ConfigDict:
    """The experiment config `config` (`path.py[:arg]`, relative to the repository root) with `--config.KEY=VALUE`
    overrides, loaded as the train CLI loads it, and validated."""
    check_overrides(overrides)
    path = config.split(":", 1)[0]
    if not os.path.isfile(path):
        raise ValueError(f"--config={config!r}: no file {path!r} (paths are relative to the repository root, "
                         "where the launcher runs and where each host runs the training)")
    try:
        c = _parse(config, overrides)
    except (AttributeError, KeyError) as e:  # ml_collections: an override names a key the locked config lacks
        raise ValueError(_unknown_key(config, overrides) or f"--config={config!r}: {e}") from e
    except flags.Error as e:
        # A failing get_config comes wrapped with its traceback; its last line is the error itself.
        raise ValueError(str(e).strip().splitlines()[-1]) from e
    experiment.validate(c)
    return c


def _parse(config: str, overrides: Sequence[str]) -> mlc.ConfigDict:
    """The config as `python -m vlm_jax.train --config=CONFIG OVERRIDES...` parses it (not yet validated)."""
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=fv, lock_config=True)
    argv = ["launch", f"--config={config}", *overrides]
    saved = sys.argv
    sys.argv = argv  # config_flags reads the --config.KEY overrides from sys.argv
    try:
        fv(argv)
        return holder.value
    finally:
        sys.argv = saved


def _unknown_key(config: str, overrides: Sequence[str]) -> str | None:
    """Names the first override whose key the config (loaded without overrides) does not have."""
    base = _parse(config, [])
    for o in overrides:
        key = o.partition("=")[0].removeprefix(OVERRIDE_PREFIX)
        node = base
        for part in key.split("."):
            if not isinstance(node, mlc.ConfigDict) or part not in node:
                return f"unknown config key {key!r} (from {o!r}) in {config}"
            node = node[part]
    return None


def check_launch(config: mlc.ConfigDict, launch: Launch) -> dict[str, int]:
    """The mesh axis sizes `config` gets on `launch`'s devices; ValueError naming any mismatch (module doc)."""
    parallel = config.train.parallel.to_dict()
    try:
        mesh = mesh_shape(parallel, launch.devices)
    except ValueError as e:
        raise ValueError(f"config.train.parallel {parallel} does not fit the launch ({launch.describe()}): {e}") from e
    split = math.prod(mesh[a] for a in BATCH_AXES)
    p = config.data.pipeline
    # Each process loads its own block of every batch array; the global arrays must split over the batch axes
    # (the vision buffers too: across processes they cannot fall back to replication).
    arrays = {"batch_size": p.batch_size, "max_patches": p.max_patches, "max_grids": p.max_grids}
    for key, per_process in arrays.items():
        total = per_process * launch.processes
        if total % split:
            need = split // math.gcd(split, launch.processes)
            raise ValueError(
                f"config.data.pipeline.{key}={per_process} per process x {launch.processes} processes = {total} "
                f"does not divide over the batch mesh axes {BATCH_AXES} = {split} devices ({launch.describe()}); "
                f"set --config.data.pipeline.{key} to a multiple of {need}")
    for key, value in {"init_from": config.init_from, "train.checkpoint.dir": config.train.checkpoint.dir}.items():
        if value and not os.path.isabs(value) and not _URL.match(value):
            raise ValueError(f"config.{key}={value!r} is relative: each host would resolve it in its own directory; "
                             f"give an absolute shared path (--config.{key}=/shared/...)")
    return mesh


def summary(config: mlc.ConfigDict, launch: Launch, mesh: dict[str, int]) -> list[str]:
    """What the checks found, one comment line each (printed before a dry run's commands)."""
    p, t = config.data.pipeline, config.train
    rows = p.batch_size * launch.processes * t.grad_accum_steps
    axes = " ".join(f"{a}={n}" for a, n in mesh.items())
    return [f"# {launch.describe()}; mesh {axes}",
            f"# stage {config.stage}: {t.num_train_steps} steps x {rows} rows ({p.batch_size} per host"
            f"{f' x {t.grad_accum_steps} micro-batches' if t.grad_accum_steps > 1 else ''}) x {p.seq_len} tokens "
            f"= {t.num_train_steps * rows * p.seq_len:.2e} tokens"]
