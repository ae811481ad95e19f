"""Runs a vlm_jax config on a multi-node GPU cluster through SLURM: one training process per node.

    python -m experiments.launch.slurm --nodes=4 --gpus_per_node=8 --time=48:00:00 [--partition=P] [--account=A] \\
        --config=vlm_jax/configs/recipe/sft_32k.py:size=8b --workdir=/shared/runs/sft_32k \\
        [--config.KEY=VALUE ...] [--setup='source venv/bin/activate'] [--dry_run]

First checks the config against nodes x GPUs (`checks`), then writes an sbatch script (default
`<workdir>/<job name>.sbatch`, its log `<workdir>/slurm-<job id>.out`) and submits it with `sbatch`.
--dry_run prints the script and the `sbatch` command instead. Run from the repository root; the job
runs in the submission directory (or --repo_dir), which every node must see.

One process per node, owning all of the node's GPUs, as on a TPU host: `config.data.pipeline.batch_size`
counts rows per node on both launchers, the data pipeline runs once per node, and the mesh puts the
innermost (tensor) axis on the GPUs of one node. In the script, process 0's address is the first host of
the node list (`scontrol show hostnames`) and a port (default: from the job id, as JAX picks it, so jobs
sharing a node do not collide); each process's rank and the process count come from srun's SLURM_PROCID
and SLURM_NTASKS, read by `jax.distributed.initialize()`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import flags

from experiments.launch import checks
from experiments.launch.command import split_overrides, train_command
from vlm_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_integer("nodes", None, "nodes of the job", flag_values=FLAGS)
flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node", flag_values=FLAGS)
flags.DEFINE_string("time", "24:00:00", "wall-clock limit (sbatch --time)", flag_values=FLAGS)
flags.DEFINE_string("partition", "", "sbatch --partition ('' = the cluster's default)", flag_values=FLAGS)
flags.DEFINE_string("account", "", "sbatch --account ('' = none)", flag_values=FLAGS)
flags.DEFINE_string("job_name", "", "sbatch --job-name (default vlm_jax-<config.stage>)", flag_values=FLAGS)
flags.DEFINE_integer("cpus_per_task", 0, "CPUs of each node's process for the data pipeline (0 = not set)",
                     flag_values=FLAGS)
flags.DEFINE_multi_string("sbatch", [], "further sbatch options, one each, e.g. --sbatch=--qos=high",
                          flag_values=FLAGS)
flags.DEFINE_string("config", None, "experiment config, path.py[:arg], relative to the repository root",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "absolute path on a filesystem every node mounts", flag_values=FLAGS)
flags.DEFINE_string("repo_dir", "", "the checkout the job runs in ('' = the submission directory)",
                    flag_values=FLAGS)
flags.DEFINE_string("setup", "", "shell command run before training, e.g. 'source venv/bin/activate'",
                    flag_values=FLAGS)
flags.DEFINE_string("python", "python", "the nodes' Python", flag_values=FLAGS)
flags.DEFINE_integer("port", 0, "coordinator port (0 = from the job id)", flag_values=FLAGS)
flags.DEFINE_string("script", "", "where to write the sbatch script (default <workdir>/<job name>.sbatch)",
                    flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "print the script and the sbatch command instead of submitting",
                  flag_values=FLAGS)

_JOB_PORT = "$((61440 + SLURM_JOB_ID % 4096))"  # JAX's own choice in a SLURM job: the top 4096 ports


@dataclasses.dataclass(frozen=True)
class Job:
    """What the sbatch script holds."""

    name: str
    nodes: int
    gpus_per_node: int
    time: str
    workdir: str
    train: Sequence[str]  # argv of each node's training process
    partition: str = ""
    account: str = ""
    cpus_per_task: int = 0
    sbatch: Sequence[str] = ()
    repo_dir: str = ""
    setup: str = ""
    port: int = 0


def sbatch_script(job: Job) -> str:
    """The batch script: one srun task per node running `job.train`, coordinated by the first node."""
    options = [f"--job-name={job.name}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
               f"--gpus-per-node={job.gpus_per_node}", f"--time={job.time}", "--exclusive",
               f"--output={os.path.join(job.workdir, 'slurm-%j.out')}"]
    for key, value in (("partition", job.partition), ("account", job.account), ("cpus-per-task", job.cpus_per_task)):
        if value:
            options.append(f"--{key}={value}")
    options += job.sbatch
    for o in options:
        if not o.startswith("--") or any(ch.isspace() for ch in o):
            # sbatch reads #SBATCH lines itself, without a shell's quoting.
            raise ValueError(f"sbatch option {o!r}: expected --name=value without spaces")
    port = str(job.port) if job.port else _JOB_PORT
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "set -eo pipefail"]
    if job.repo_dir:
        lines.append(f"cd {shlex.quote(job.repo_dir)}")
    if job.setup:
        lines.append(job.setup)  # a shell command as given, not quoted
    lines += [
        "export JAX_PLATFORMS=cuda",
        "# One process per node sees all of the node's GPUs (JAX's SLURM detection alone would give it one).",
        "export JAX_LOCAL_DEVICE_IDS=" + ",".join(map(str, range(job.gpus_per_node))),
        "# Process 0 runs on the first node of the allocation; the others connect to it.",
        f'export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{port}"',
        "# Each task's rank and the task count: SLURM_PROCID, SLURM_NTASKS (read by jax.distributed.initialize).",
        shlex.join(["srun", f"--nodes={job.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *job.train]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the launcher on `argv` (without the program name); returns the exit status."""
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        for name in ("nodes", "config", "workdir"):
            if not FLAGS[name].value:
                raise ValueError(f"--{name} is required")
        if FLAGS.nodes < 1 or FLAGS.gpus_per_node < 1:
            raise ValueError(f"--nodes={FLAGS.nodes} and --gpus_per_node={FLAGS.gpus_per_node} must be >= 1")
        workdir = checks.check_workdir(FLAGS.workdir)
        launch = checks.Launch(FLAGS.nodes, FLAGS.gpus_per_node, f"{FLAGS.nodes} nodes")
        config = checks.load_config(FLAGS.config, overrides)
        mesh = checks.check_launch(config, launch)
        job = Job(name=FLAGS.job_name or f"vlm_jax-{config.stage}", nodes=FLAGS.nodes,
                  gpus_per_node=FLAGS.gpus_per_node, time=FLAGS.time, workdir=workdir,
                  train=train_command(FLAGS.config, workdir, overrides, python=FLAGS.python),
                  partition=FLAGS.partition, account=FLAGS.account, cpus_per_task=FLAGS.cpus_per_task,
                  sbatch=FLAGS.sbatch, repo_dir=FLAGS.repo_dir, setup=FLAGS.setup, port=FLAGS.port)
        script = FLAGS.script or os.path.join(workdir, f"{job.name}.sbatch")
        text, submit = sbatch_script(job), ["sbatch", script]
        if FLAGS.dry_run:
            print("\n".join([*checks.summary(config, launch, mesh), f"# {script}:"]))
            print(text + shlex.join(submit))
            return 0
        os.makedirs(workdir, exist_ok=True)  # sbatch opens the --output log there
        os.makedirs(os.path.dirname(os.path.abspath(script)), exist_ok=True)
        with open(script, "w") as f:
            f.write(text)
        print("+ " + shlex.join(submit), flush=True)
        return subprocess.run(submit, check=False).returncode

    return cli.run(FLAGS, body, own, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
