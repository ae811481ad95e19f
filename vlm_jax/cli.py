"""Plumbing shared by the `python -m vlm_jax.<verb>` command lines: absl flags, one-line errors.

Each CLI defines its flags on its own `flags.FlagValues` rather than the global `flags.FLAGS`, so
that several CLIs can be imported, and their `main` called, in one process (the tests do) without
their flag names (`--checkpoint`, `--preset`, ...) clashing. `run` parses a command line into them
and calls the CLI's body; a bad flag, a bad command or a bad input (FileNotFoundError, ValueError)
prints one line `error: ...` on stderr and gives exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

from absl import flags

USAGE_ERROR = 2
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def parse_json_object(value: str, what: str) -> dict:
    """A JSON object given on a command line; ValueError naming `what` when it is not one."""
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {value!r}")
    return obj


def error_line(e: BaseException) -> str:
    """`error: <message>` on one line (a multi-line message is joined with spaces)."""
    return "error: " + " ".join(str(e).splitlines())


def run(flag_values: flags.FlagValues, body: Callable[..., int | None], argv: Sequence[str] | None, *, doc: str,
        commands: Sequence[str] = ()) -> int:
    """Parses `argv` (without the program name; None: `sys.argv[1:]`) into `flag_values`, then returns
    `body()`, or `body(command)` when the CLI has `commands` (exactly one must be given). `--help`
    prints `doc` and the flags. Errors: one line on stderr, exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        # absl groups the help by defining module (a file path line); the flags are the indented lines.
        lines = flag_values.get_help(include_special_flags=False).splitlines()
        print(doc.rstrip() + "\n\nflags:\n" + "\n".join(line for line in lines if line.startswith(" ")))
        return 0
    flag_values.unparse_flags()  # a fresh parse: values of an earlier call in this process do not carry over
    try:
        args = flag_values(["prog", *argv])[1:]
        if not commands:
            if args:
                raise ValueError(f"unexpected arguments {args} (every input is a --flag)")
            return body() or 0
        if len(args) != 1 or args[0] not in commands:
            raise ValueError(f"give exactly one command, one of {', '.join(commands)}; got {args}")
        return body(args[0]) or 0
    except (flags.Error, FileNotFoundError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return USAGE_ERROR
