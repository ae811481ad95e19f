"""Runs a vlm_jax config on a multi-host Cloud TPU slice (TPU VM): one training process per host.

    python -m experiments.launch.tpu_vm --tpu_name=NAME --zone=ZONE --accelerator_type=v5p-64 \\
        --config=vlm_jax/configs/recipe/s1_multimodal.py:size=8b --workdir=/mnt/shared/s1_multimodal \\
        [--config.KEY=VALUE ...] [--repo_url=URL] [--dry_run]

First checks the config against the slice's devices (`checks`: the config loads, the mesh of
`config.train.parallel` covers hosts x chips, the batch divides over it). Then, through
`gcloud compute tpus tpu-vm ssh --worker=all` (every host at once):
  1. setup: clone --repo_url into --repo_dir if it is not there yet, then --setup inside it ('' skips the step);
  2. training: `python3 -m vlm_jax.train --distributed ...` inside --repo_dir with JAX_PLATFORMS=tpu, where
     `jax.distributed.initialize()` finds the other hosts and this host's index from the TPU VM metadata.
--dry_run prints the commands instead of running them. The training command runs in the foreground of
the ssh sessions (run the launcher inside tmux/screen for a long run). Run from the repository root.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import flags

from experiments.launch import checks
from experiments.launch.command import split_overrides, train_command
from vlm_jax import cli

FLAGS = flags.FlagValues()
flags.DEFINE_string("tpu_name", None, "the TPU VM's name", flag_values=FLAGS)
flags.DEFINE_string("zone", None, "its zone", flag_values=FLAGS)
flags.DEFINE_string("project", "", "Google Cloud project ('' = gcloud's default)", flag_values=FLAGS)
flags.DEFINE_string("accelerator_type", "", "e.g. v5p-64, v4-32, v5litepod-16, v6e-16: gives hosts and chips per "
                    "host", flag_values=FLAGS)
flags.DEFINE_integer("num_hosts", 0, "hosts of the slice (other accelerator types; checked against "
                     "--accelerator_type when both are given)", flag_values=FLAGS)
flags.DEFINE_integer("chips_per_host", 4, "JAX devices per host, with --num_hosts", flag_values=FLAGS)
flags.DEFINE_string("config", None, "experiment config, path.py[:arg], relative to the repository root",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "absolute path on a filesystem every host mounts", flag_values=FLAGS)
flags.DEFINE_string("repo_dir", "vlm_jax", "the checkout on each host (relative: to the home directory)",
                    flag_values=FLAGS)
flags.DEFINE_string("repo_url", "", "git URL cloned into --repo_dir when it is missing ('' = already there)",
                    flag_values=FLAGS)
flags.DEFINE_string("setup", "pip install -e .[tpu]", "shell command run in --repo_dir on each host before "
                    "training ('' = none)", flag_values=FLAGS)
flags.DEFINE_string("python", "python3", "the hosts' Python", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "print the commands instead of running them", flag_values=FLAGS)

# generation -> (accelerator-type units per JAX device, JAX devices per host of a multi-host slice). v2/v3/v4/v5p
# count TensorCores (v4/v5p: 2 per chip, one JAX device per chip; v2/v3: one device per core); v5e/v6e count chips.
_TPU = {"v2": (1, 8), "v3": (1, 8), "v4": (2, 4), "v5p": (2, 4), "v5litepod": (1, 4), "v6e": (1, 4)}
_SINGLE_HOST = {"v5litepod": 8, "v6e": 8}  # the most chips one host of these generations holds


def tpu_topology(accelerator_type: str) -> tuple[int, int]:
    """`v5p-64` -> (hosts, JAX devices per host) = (8, 4)."""
    gen, _, n = accelerator_type.partition("-")
    if gen not in _TPU or not n.isdigit() or int(n) == 0:
        raise ValueError(f"--accelerator_type={accelerator_type!r}: expected <generation>-<size> with generation one "
                         f"of {', '.join(_TPU)}; for other types give --num_hosts and --chips_per_host")
    units, per_host = _TPU[gen]
    if int(n) % units:
        raise ValueError(f"--accelerator_type={accelerator_type!r}: {gen} sizes count {units} per chip")
    devices = int(n) // units
    if devices <= _SINGLE_HOST.get(gen, per_host):
        return 1, devices
    if devices % per_host:
        raise ValueError(f"--accelerator_type={accelerator_type!r}: {devices} devices are not whole hosts "
                         f"of {per_host}")
    return devices // per_host, per_host


def slice_launch(accelerator_type: str, num_hosts: int, chips_per_host: int) -> checks.Launch:
    """The slice's processes (one per host) and devices per process, from the type or from the host count."""
    if accelerator_type:
        hosts, per_host = tpu_topology(accelerator_type)
        if num_hosts and num_hosts != hosts:
            raise ValueError(f"--num_hosts={num_hosts} but --accelerator_type={accelerator_type} has {hosts} hosts")
        return checks.Launch(hosts, per_host, accelerator_type)
    if num_hosts < 1 or chips_per_host < 1:
        raise ValueError("give --accelerator_type (e.g. v5p-64), or --num_hosts and --chips_per_host")
    return checks.Launch(num_hosts, chips_per_host, f"{num_hosts} hosts")


def ssh_command(tpu_name: str, zone: str, project: str, remote: str) -> list[str]:
    """`gcloud ... ssh` running the shell command `remote` on every host of the slice."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}",
            *([f"--project={project}"] if project else []), "--worker=all", f"--command={remote}"]


def remote_commands(*, repo_dir: str, repo_url: str, setup: str, train: Sequence[str]) -> list[str]:
    """The shell commands each host runs: the setup (when there is one), then the training."""
    d = shlex.quote(repo_dir)
    out = []
    steps = [f"(test -d {d} || git clone {shlex.quote(repo_url)} {d})"] if repo_url else []
    if setup:
        steps.append(f"cd {d} && {setup}")  # `setup` is a shell command as given, not quoted
    if steps:
        out.append(" && ".join(steps))
    out.append(f"cd {d} && " + shlex.join(["env", "JAX_PLATFORMS=tpu", *train]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the launcher on `argv` (without the program name); returns the exit status."""
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        for name in ("tpu_name", "zone", "config", "workdir"):
            if not FLAGS[name].value:
                raise ValueError(f"--{name} is required")
        workdir = checks.check_workdir(FLAGS.workdir)
        launch = slice_launch(FLAGS.accelerator_type, FLAGS.num_hosts, FLAGS.chips_per_host)
        config = checks.load_config(FLAGS.config, overrides)
        mesh = checks.check_launch(config, launch)
        train = train_command(FLAGS.config, workdir, overrides, python=FLAGS.python)
        commands = [ssh_command(FLAGS.tpu_name, FLAGS.zone, FLAGS.project, remote)
                    for remote in remote_commands(repo_dir=FLAGS.repo_dir, repo_url=FLAGS.repo_url,
                                                  setup=FLAGS.setup, train=train)]
        if FLAGS.dry_run:
            print("\n".join([*checks.summary(config, launch, mesh), *map(shlex.join, commands)]))
            return 0
        for cmd in commands:
            print("+ " + shlex.join(cmd), flush=True)
            rc = subprocess.run(cmd, check=False).returncode
            if rc:
                return rc
        return 0

    return cli.run(FLAGS, body, own, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
