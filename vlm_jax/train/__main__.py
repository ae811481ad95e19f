"""python -m vlm_jax.train --config=vlm_jax/configs/synthetic_tiny.py [--workdir=DIR] [--config.KEY=VALUE ...]

Trains (resuming from DIR's newest intact checkpoint when there is one), exports `DIR/final`, evaluates
on the held-out split and prints a summary. Any config key can be overridden on the command line
(ml_collections config flags), e.g. `--config.train.num_train_steps=100 --config.model.deepstack=False`.
Errors (bad config, a failed checkpoint save, no intact checkpoint to resume from) print one line and
exit with status 2.

Multi-host (one process per host, `experiments/launch/`): `--distributed` calls `jax.distributed.initialize`
before anything else touches a device. `--coordinator_address`, `--num_processes` and `--process_id`
are passed when given; unset ones come from the environment as JAX reads it (JAX_COORDINATOR_ADDRESS,
SLURM's SLURM_NTASKS / SLURM_PROCID, a Cloud TPU VM's metadata).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (a get_config() module)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config.stage>)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host runs)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (default: from the env)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run (default: from the env)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (default: from the env)")


def init_distributed() -> None:
    """`jax.distributed.initialize` with the flags that were given; JAX detects the rest (module doc)."""
    import jax

    given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
             "process_id": _PROCESS_ID.value}
    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _DISTRIBUTED.value:
        init_distributed()  # before the loop touches a device (loading the config only imported jax)
    elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id need --distributed")
    from absl import logging as absl_logging

    from vlm_jax.train.checkpoint import CheckpointError
    from vlm_jax.train.loop import train_and_evaluate

    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("runs", config.stage)
    try:
        train_and_evaluate(config, workdir)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
