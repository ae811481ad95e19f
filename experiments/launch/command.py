"""The command line every host runs, and the `--config.KEY=VALUE` overrides a launcher passes through to it."""

from __future__ import annotations

from collections.abc import Sequence

OVERRIDE_PREFIX = "--config."


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` -> (the launcher's own arguments, the `--config.KEY...` overrides, in order)."""
    own = [a for a in argv if not a.startswith(OVERRIDE_PREFIX)]
    return own, [a for a in argv if a.startswith(OVERRIDE_PREFIX)]


def check_overrides(overrides: Sequence[str]) -> None:
    """Each override must be one `--config.KEY=VALUE` argument (the launcher does not guess the value's position)."""
    for o in overrides:
        key, sep, _ = o.partition("=")
        if not sep or key == OVERRIDE_PREFIX.rstrip("."):
            raise ValueError(f"override {o!r}: write it as one argument {key}=VALUE")


def train_command(config: str, workdir: str, overrides: Sequence[str], python: str = "python3") -> list[str]:
    """argv of one training process of a multi-host run (the distributed opt-in of `vlm_jax.train`)."""
    return [python, "-m", "vlm_jax.train", "--distributed", f"--config={config}", f"--workdir={workdir}",
            *overrides]
