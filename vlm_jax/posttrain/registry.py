"""Look up a loss by name in a registry dict and bind its keyword options, failing early on typos."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any


def lookup(registry: Mapping[str, Callable], kind: str, name: str, options: Mapping[str, Any]) -> Callable:
    """registry[name] with `options` bound; an unknown name or option raises ValueError naming the valid ones.

    kind names the registry in messages ("policy loss", "distillation loss"). Options are the
    function's keyword-only arguments."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(registry)}")
    fn = registry[name]
    known = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{kind} {name!r} has no option(s) {unknown}; options: {', '.join(known)}")
    return functools.partial(fn, **options) if options else fn
