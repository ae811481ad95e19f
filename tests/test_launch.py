"""experiments/launch: the dry runs of the TPU VM and SLURM launchers, the checks they make, and the
distributed opt-in of the train CLI. No model is built and nothing compiles: only configs are read."""

import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
from absl import flags

from experiments.launch import checks, slurm, tpu_vm

ROOT = Path(__file__).resolve().parents[1]
TINY = "vlm_jax/configs/synthetic_tiny.py"
TRICKY = "--config.description=it's a \"test\" $HOME; rm -rf x"  # survives two shells only if quoted right


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root, as users type them


def _run(main, argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _tpu_argv(*extra):
    return ["--tpu_name=my-tpu", "--zone=us-east5-a", "--accelerator_type=v4-16", f"--config={TINY}",
            "--workdir=/mnt/shared/run", "--dry_run", *extra]


def _slurm_argv(*extra):
    return ["--nodes=2", "--gpus_per_node=4", "--time=01:30:00", "--partition=gpu", "--account=proj",
            f"--config={TINY}", "--workdir=/shared/runs/tiny", "--dry_run", *extra]


def test_tpu_dry_run_prints_setup_then_training_on_every_worker(capsys):
    rc, out, err = _run(tpu_vm.main, _tpu_argv("--config.train.num_train_steps=70", TRICKY,
                                               "--repo_url=https://example.com/vlm_jax.git"), capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("# v4-16: 2 hosts x 4 devices = 8 devices")
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) == 2
    for cmd in commands:
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
        assert "--zone=us-east5-a" in cmd and "--worker=all" in cmd
        assert not any(a.startswith("--project") for a in cmd)
    setup, train = (cmd[-1].removeprefix("--command=") for cmd in commands)
    assert "git clone https://example.com/vlm_jax.git vlm_jax" in setup
    assert setup.endswith("cd vlm_jax && pip install -e .[tpu]")
    remote = shlex.split(train)
    assert remote[:3] == ["cd", "vlm_jax", "&&"]
    assert remote[3:] == ["env", "JAX_PLATFORMS=tpu", "python3", "-m", "vlm_jax.train", "--distributed",
                          f"--config={TINY}", "--workdir=/mnt/shared/run", "--config.train.num_train_steps=70",
                          TRICKY]


def test_tpu_setup_can_be_skipped_and_project_is_passed(capsys):
    rc, out, err = _run(tpu_vm.main, _tpu_argv("--setup=", "--project=my-proj"), capsys)
    assert rc == 0, err
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == 1 and "--project=my-proj" in commands[0]
    assert "vlm_jax.train" in commands[0][-1]


@pytest.mark.parametrize("accelerator_type, expected", [
    ("v5p-64", (8, 4)), ("v4-8", (1, 4)), ("v4-32", (4, 4)), ("v5litepod-8", (1, 8)), ("v5litepod-16", (4, 4)),
    ("v6e-4", (1, 4)), ("v3-32", (4, 8)),
])
def test_tpu_topology(accelerator_type, expected):
    assert tpu_vm.tpu_topology(accelerator_type) == expected


@pytest.mark.parametrize("accelerator_type, message", [("v9-8", "generation"), ("v5p-7", "count 2 per chip"),
                                                       ("v5p", "generation")])
def test_tpu_topology_rejects_unknown_types(accelerator_type, message):
    with pytest.raises(ValueError, match=message):
        tpu_vm.tpu_topology(accelerator_type)


def test_tpu_num_hosts_must_agree_with_the_type(capsys):
    rc, _, err = _run(tpu_vm.main, _tpu_argv("--num_hosts=4"), capsys)
    assert rc == 2 and "--num_hosts=4" in err and "2 hosts" in err


def test_slurm_dry_run_prints_the_script_and_the_sbatch_command(capsys):
    rc, out, err = _run(slurm.main, _slurm_argv("--config.train.num_train_steps=70", TRICKY, "--sbatch=--qos=high",
                                                "--setup=source venv/bin/activate"), capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("# 2 nodes: 2 hosts x 4 devices = 8 devices")
    assert shlex.split(lines[-1]) == ["sbatch", "/shared/runs/tiny/vlm_jax-synthetic_tiny.sbatch"]
    script = out[out.index("#!/bin/bash"):out.rindex("sbatch ")]
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["--job-name=vlm_jax-synthetic_tiny", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4",
                          "--time=01:30:00", "--exclusive", "--output=/shared/runs/tiny/slurm-%j.out",
                          "--partition=gpu", "--account=proj", "--qos=high"]
    body = script.splitlines()
    assert "export JAX_PLATFORMS=cuda" in body and "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in body
    assert body.index("source venv/bin/activate") < body.index("export JAX_PLATFORMS=cuda")
    coordinator = next(line for line in body if line.startswith("export JAX_COORDINATOR_ADDRESS="))
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in coordinator
    srun = shlex.split(body[-1])
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert srun[4:] == ["python", "-m", "vlm_jax.train", "--distributed", f"--config={TINY}",
                        "--workdir=/shared/runs/tiny", "--config.train.num_train_steps=70", TRICKY]
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_slurm_fixed_port_and_options_without_spaces(capsys):
    rc, out, err = _run(slurm.main, _slurm_argv("--port=29500", "--job_name=my job"), capsys)
    assert rc == 2 and "'--job-name=my job'" in err
    rc, out, err = _run(slurm.main, _slurm_argv("--port=29500"), capsys)
    assert rc == 0, err
    assert '| head -n 1):29500"' in out



def _recorder(module, monkeypatch, returncodes=()):
    """Replaces `module.subprocess.run`; returns the commands it is given (each returns the next of `returncodes`,
    then 0)."""
    ran, codes = [], iter(returncodes)

    def run(cmd, check):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, next(codes, 0))

    monkeypatch.setattr(module.subprocess, "run", run)
    return ran


def test_tpu_launch_runs_setup_then_training_and_stops_at_a_failure(monkeypatch, capsys):
    argv = [a for a in _tpu_argv() if a != "--dry_run"]
    ran = _recorder(tpu_vm, monkeypatch, returncodes=[3])
    rc, _, _ = _run(tpu_vm.main, argv, capsys)
    assert rc == 3 and len(ran) == 1 and "pip install" in ran[0][-1]  # a failed setup: no training
    ran = _recorder(tpu_vm, monkeypatch)
    rc, out, _ = _run(tpu_vm.main, argv, capsys)
    assert rc == 0 and len(ran) == 2 and "vlm_jax.train" in ran[1][-1]
    assert out.splitlines() == ["+ " + shlex.join(cmd) for cmd in ran]


def test_slurm_launch_writes_the_script_and_submits_it(monkeypatch, tmp_path, capsys):
    submitted = _recorder(slurm, monkeypatch)
    workdir = tmp_path / "run"
    argv = [a for a in _slurm_argv(f"--workdir={workdir}") if a != "--dry_run"]
    rc, _, err = _run(slurm.main, argv, capsys)
    assert rc == 0, err
    script = workdir / "vlm_jax-synthetic_tiny.sbatch"
    assert submitted == [["sbatch", str(script)]]
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n#SBATCH --job-name=vlm_jax-synthetic_tiny\n")
    assert f"--workdir={workdir}" in text.splitlines()[-1]


@pytest.mark.parametrize("main, argv", [(tpu_vm.main, _tpu_argv), (slurm.main, _slurm_argv)])
@pytest.mark.parametrize("workdir, message", [("runs/x", "is relative"), ("gs://bucket/x", "mount the bucket")])
def test_workdir_must_be_an_absolute_shared_path(main, argv, workdir, message, capsys):
    rc, out, err = _run(main, [*argv(), f"--workdir={workdir}"], capsys)
    assert rc == 2 and out == ""
    assert f"--workdir={workdir!r}" in err and message in err


def test_mesh_that_does_not_cover_the_devices_is_named(capsys):
    rc, _, err = _run(tpu_vm.main, _tpu_argv("--config.train.parallel.data=4", "--config.train.parallel.tensor=4"),
                      capsys)
    assert rc == 2
    assert "config.train.parallel" in err and "v4-16: 2 hosts x 4 devices = 8 devices" in err
    assert "use 16 devices, but 8 are available" in err


def test_batch_that_does_not_divide_over_the_batch_axes_is_named(capsys):
    argv = _slurm_argv("--config.train.parallel.fsdp=-1", "--config.train.parallel.data=1",
                       "--config.data.pipeline.batch_size=3")
    rc, _, err = _run(slurm.main, argv, capsys)
    assert rc == 2
    assert "config.data.pipeline.batch_size=3 per process x 2 processes = 6" in err and "= 8 devices" in err
    assert "multiple of 4" in err  # 4 rows per node x 2 nodes fill the 8 devices
    rc, _, err = _run(slurm.main, [*argv[:-1], "--config.data.pipeline.batch_size=4"], capsys)
    assert rc == 0, err


def test_unknown_config_key_is_named(capsys):
    rc, _, err = _run(slurm.main, _slurm_argv("--config.train.optimizer.nonexistent=3"), capsys)
    assert rc == 2 and "'train.optimizer.nonexistent'" in err


@pytest.mark.parametrize("argv, message", [
    (["--config.train.num_train_steps"], "write it as one argument --config.train.num_train_steps=VALUE"),
    (["--config.train.num_train_steps=abc"], "num_train_steps"),
    (["--config.train.num_train_steps=0"], "num_train_steps=0 must be > 0"),
])
def test_bad_override_values_fail_in_the_dry_run(argv, message, capsys):
    rc, _, err = _run(tpu_vm.main, _tpu_argv(*argv), capsys)
    assert rc == 2 and message in err


def test_recipe_at_a_released_size_needs_shared_init_from_and_a_fitting_batch(capsys):
    base = ["--nodes=4", "--gpus_per_node=8", "--config=vlm_jax/configs/recipe/sft_32k.py:size=8b",
            "--workdir=/shared/sft_32k", "--dry_run"]
    rc, _, err = _run(slurm.main, base, capsys)
    assert rc == 2 and "batch_size=2 per process x 4 processes" in err
    rc, _, err = _run(slurm.main, [*base, "--config.data.pipeline.batch_size=8"], capsys)
    assert rc == 2 and "config.init_from='runs/s3_ultralong' is relative" in err
    rc, out, err = _run(slurm.main, [*base, "--config.data.pipeline.batch_size=8",
                                     "--config.init_from=/shared/s3_ultralong"], capsys)
    assert rc == 0, err
    assert "mesh data=1 fsdp=32 expert=1 sequence=1 tensor=1" in out and "x 32768 tokens" in out


def test_missing_config_file_is_named(capsys):
    rc, _, err = _run(tpu_vm.main, _tpu_argv("--config=vlm_jax/configs/nope.py"), capsys)
    assert rc == 2 and "no file 'vlm_jax/configs/nope.py'" in err


def test_launch_summary_counts_hosts_and_devices():
    launch = checks.Launch(processes=3, devices_per_process=8, what="3 nodes")
    assert launch.devices == 24 and launch.describe() == "3 nodes: 3 hosts x 8 devices = 24 devices"


# The train CLI's distributed opt-in ------------------------------------------------------------------------------


@pytest.fixture()
def train_cli(monkeypatch):
    """Runs `python -m vlm_jax.train` in-process with `jax.distributed.initialize` and the loop mocked;
    returns the calls in order."""
    import jax

    from vlm_jax.train import __main__ as train_main

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(("initialize", kw)))
    loop = types.ModuleType("vlm_jax.train.loop")  # a stand-in: the real one's imports take seconds
    loop.train_and_evaluate = lambda config, workdir: calls.append(("train", workdir))
    monkeypatch.setitem(sys.modules, "vlm_jax.train.loop", loop)

    def run(*argv):
        argv = ["vlm_jax.train", f"--config={TINY}", "--workdir=/tmp/w", *argv]
        monkeypatch.setattr(sys, "argv", argv)  # config_flags reads --config.KEY from sys.argv
        try:
            flags.FLAGS(argv)
            train_main.main(["vlm_jax.train"])
        finally:
            flags.FLAGS.unparse_flags()
        return calls

    return run


def test_train_cli_distributed_initializes_first_with_the_flags_given(train_cli):
    calls = train_cli("--distributed", "--coordinator_address=10.0.0.1:8476", "--num_processes=2", "--process_id=1")
    assert calls == [("initialize", {"coordinator_address": "10.0.0.1:8476", "num_processes": 2, "process_id": 1}),
                     ("train", "/tmp/w")]


def test_train_cli_distributed_leaves_unset_values_to_jax(train_cli):
    assert train_cli("--distributed") == [("initialize", {}), ("train", "/tmp/w")]


def test_train_cli_without_distributed_does_not_initialize(train_cli):
    assert train_cli() == [("train", "/tmp/w")]


def test_train_cli_rejects_distributed_values_without_the_opt_in(train_cli):
    from absl import app

    with pytest.raises(app.UsageError, match="need --distributed"):
        train_cli("--process_id=1")


def test_readme_examples_print_what_the_readme_shows(capsys):
    text = (ROOT / "experiments" / "launch" / "README.md").read_text()
    examples = re.findall(r"```\n(python -m experiments\.launch\.\w+ .*?)```\n\nprints\n\n```\n(.*?)```", text, re.S)
    assert len(examples) == 2
    for command, printed in examples:
        argv = shlex.split(command.replace("\\\n", " "))
        main = {"experiments.launch.tpu_vm": tpu_vm.main, "experiments.launch.slurm": slurm.main}[argv[2]]
        rc, out, err = _run(main, argv[3:], capsys)
        assert rc == 0, err
        assert out == printed
