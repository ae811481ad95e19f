"""python -m vlm_jax.train --config=vlm_jax/configs/synthetic_tiny.py [--workdir=DIR] [--config.KEY=VALUE ...]

Trains (resuming from DIR's newest intact checkpoint when there is one), exports `DIR/final`, evaluates
on the held-out split and prints a summary. Any config key can be overridden on the command line
(ml_collections config flags), e.g. `--config.train.num_train_steps=100 --config.model.deepstack=False`.
Errors (bad config, a failed checkpoint save, no intact checkpoint to resume from) print one line and
exit with status 2.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (a get_config() module)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (default: runs/<config.stage>)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
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
