"""python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_sapo.py[:8b] [--workdir=DIR] [--config.K=V]

Runs post-training by `config.method`: "rl" (`vlm_jax.posttrain.rl`) or "distill"
(`vlm_jax.posttrain.distill`), resuming from DIR's newest intact checkpoint when there is one, and
exports DIR/final. DIR defaults to runs/posttrain/<config.name>. Any config key can be overridden on the
command line, e.g. `--config.iterations=20 --config.rollout.group_size=4`. Errors (bad config, a failed
checkpoint save, no intact checkpoint to resume from) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import flags
from ml_collections import config_flags

from vlm_jax import cli

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file("config", None, "post-training config file (a get_config() module)",
                                          flag_values=FLAGS, lock_config=True)
flags.DEFINE_string("workdir", None, "output directory (default: runs/posttrain/<config.name>)", flag_values=FLAGS)

METHODS = {"rl": "vlm_jax.posttrain.rl", "distill": "vlm_jax.posttrain.distill"}


def runner(method: str) -> Callable[[Any, str], dict]:
    """`run(config, workdir)` of the method's module, imported on demand; ValueError naming what is missing."""
    if method not in METHODS:
        raise ValueError(f"config.method={method!r}; choose from {', '.join(METHODS)}")
    try:
        module = importlib.import_module(METHODS[method])
    except ModuleNotFoundError as e:
        if e.name != METHODS[method]:
            raise
        raise ValueError(f"config.method={method!r} needs {METHODS[method]}, which is not in this checkout") from e
    return module.run


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI on `argv` (without the program name); returns the exit status."""

    def body() -> int:
        from absl import logging as absl_logging

        from vlm_jax.train.checkpoint import CheckpointError

        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
        if _CONFIG.value is None:
            raise ValueError("--config is required (a file under vlm_jax/configs/posttrain/)")
        config = _CONFIG.value
        run = runner(config.method)
        workdir = FLAGS.workdir or os.path.join("runs", "posttrain", config.name)
        try:
            run(config, workdir)
        except CheckpointError as e:
            print(cli.error_line(e), file=sys.stderr)
            return cli.USAGE_ERROR
        return 0

    argv = list(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "vlm_jax.posttrain", *argv]  # config_flags reads --config.KEY from sys.argv
    try:
        return cli.run(FLAGS, body, argv, doc=__doc__)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
