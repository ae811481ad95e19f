"""Arg strings of config files, `--config=file.py:ARG` -> typed options (big_vision's `parse_arg`).

    def get_config(arg=None):
        a = parse_arg(arg, deepstack=True, seed=0, smoke=False)   # "deepstack=False,seed=1" -> typed dict

ARG is comma-separated `key=value` pairs; with `bare="size"` the first item may be a bare value
(`"8b"` = `"size=8b"`). Every key must have a default, and a value takes its default's type: bool
(True / False / 1 / 0, any case), int, float or str; a key whose default is None keeps the string
("None" gives None). Unknown keys, repeated keys and values of the wrong type fail naming them.
`format_arg` writes options back (`parse_arg(format_arg(o), **defaults)` gives `o` back), which is
how a sweep turns each run's options into the arg of its `get_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_arg(arg: str | None, *, bare: str | None = None, where: str = "config arg", **defaults: Any
              ) -> dict[str, Any]:
    """The options of `arg`: `defaults` updated with its `key=value` items, each parsed to its default's type.

    bare: the key a first item without `=` sets. where: how error messages name the arg."""
    out = dict(defaults)
    seen: set[str] = set()
    for i, part in enumerate(p.strip() for p in (arg or "").split(",") if p.strip()):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep:
            if bare is None or i:
                raise ValueError(f"{where} {arg!r}: {part!r} is not key=value" if bare is None else
                                 f"{where} {arg!r}: only the first item may be a bare {bare}")
            key, value = bare, part
        if key not in defaults:
            raise ValueError(f"{where} {arg!r}: unknown key {key!r} (expected {', '.join(defaults)})")
        if key in seen:
            raise ValueError(f"{where} {arg!r}: {key!r} is given twice")
        seen.add(key)
        out[key] = parse_value(value, defaults[key], f"{where} {key}={value!r}")
    return out


def parse_value(text: str, default: Any, where: str = "value") -> Any:
    """`text` as the type of `default` (bool, int, float, str; None: str, or None for "None")."""
    if isinstance(default, bool):  # before int: bool is an int
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{where}: expected True or False")
        return text.lower() in _TRUE
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"{where}: expected {'an int' if kind is int else 'a number'}") from None
    if default is None and text == "None":
        return None
    if default is None or isinstance(default, str):
        return text
    raise TypeError(f"{where}: defaults must be bool, int, float, str or None, not {type(default).__name__}")


def format_arg(options: Mapping[str, Any]) -> str:
    """`{"deepstack": False, "seed": 1}` -> `"deepstack=False,seed=1"` (the inverse of `parse_arg`)."""
    parts = []
    for key, value in options.items():
        text = str(value)
        if isinstance(value, bool | int | float | str) or value is None:
            if any(c in text for c in ",=") or text != text.strip() or not text:
                raise ValueError(f"option {key}={text!r}: a value in an arg string may not be empty, hold ',' or "
                                 "'=' or start or end with a space")
        else:
            raise ValueError(f"option {key}={value!r}: expected a bool, int, float, str or None")
        parts.append(f"{key}={text}")
    return ",".join(parts)
