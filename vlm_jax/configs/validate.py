"""The one key checker of every config: an unknown or missing key fails naming its full dotted path.

Every config (model, train, experiment, pipeline, packing, processor, synthetic world) is an
ml_collections ConfigDict built from its module's `base_config()`, which holds every key with its
default. Values given by a user (a dict, a ConfigDict, or dotted keys such as "optimizer.llm_lr")
are written onto that base with `merge`, which first checks them with `check_keys`:

    c = merge(base_config(), {"optimizer": {"llm_lr": 1e-4}}, "train")
    check_keys(c, base_config(), "train")   # complete: no unknown and no missing key

Mappings keyed by names the user chooses (data sources, task mixtures, split sizes) are `free`:
their keys are not checked here, and `merge` replaces them whole instead of merging into them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ml_collections as mlc


def _is_mapping(x: Any) -> bool:
    return isinstance(x, (Mapping, mlc.ConfigDict))


def _plain(x: Any) -> Any:
    return x.to_dict() if isinstance(x, mlc.ConfigDict) else x


def check_keys(config: Any, reference: Any, where: str, *, partial: bool = False,
               free: Collection[str] = ()) -> None:
    """ValueError naming `where.key` for each key of `config` that `reference` lacks and, unless
    `partial`, each key of `reference` that `config` lacks; sub-configs are checked recursively,
    except the `free` ones (dotted paths relative to `config`)."""
    _check(config, reference, where, partial, frozenset(free), "")


def _check(config: Any, reference: Any, where: str, partial: bool, free: frozenset, rel: str) -> None:
    if not _is_mapping(config):
        raise ValueError(f"{where} must be a mapping of config keys, got {type(config).__name__} {config!r}")
    keys, ref_keys = set(config.keys()), set(reference.keys())
    unknown = sorted(keys - ref_keys)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                         f"valid keys of {where}: {', '.join(sorted(ref_keys))}")
    missing = [] if partial else sorted(ref_keys - keys)
    if missing:
        raise ValueError(f"missing config key(s) {', '.join(f'{where}.{k}' for k in missing)}")
    for k in sorted(keys):
        path = f"{rel}.{k}" if rel else k
        if _is_mapping(reference[k]) and path not in free:
            _check(config[k], reference[k], f"{where}.{k}", partial, free, path)


def merge(base: mlc.ConfigDict, overrides: Any, where: str, *, free: Collection[str] = ()) -> mlc.ConfigDict:
    """`base` with `overrides` written into it (in place, and returned).

    `overrides` may hold any subset of the keys of `base` (`check_keys(partial=True)`); sub-configs
    merge key by key, `free` ones (dotted paths) are replaced whole. A value of the wrong type (ConfigDict
    type safety: an int key takes no float, a str key no bool) fails naming the key.
    """
    if overrides is None:
        return base
    check_keys(overrides, base, where, partial=True, free=free)
    _merge(base, overrides, where, frozenset(free), "")
    return base


def _merge(base: mlc.ConfigDict, overrides: Any, where: str, free: frozenset, rel: str) -> None:
    for k in overrides.keys():
        v, path = overrides[k], f"{rel}.{k}" if rel else k
        if isinstance(base[k], mlc.ConfigDict) and path not in free:
            _merge(base[k], v, f"{where}.{k}", free, path)
            continue
        try:
            base[k] = _plain(v)
        except TypeError as e:
            raise ValueError(f"{where}.{k}: {e}") from e


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}}: dotted-key overrides as a nested mapping for `merge`."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"config override {key!r} goes below {p!r}, which is also given a value")
        node[leaf] = value
    return out
