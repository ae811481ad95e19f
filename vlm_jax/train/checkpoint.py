"""Checkpoints with Orbax: asynchronous, every N steps, keep the last K, atomic, exact resume.

A checkpoint `<dir>/<step>/` holds three items:
  state  the TrainState (params, optimizer state, step, rng, skip counters), sharded arrays
         written by every process (`StandardCheckpointHandler`, OCDBT/Zarr);
  data   the data iterator's state (`get_state()`, a JSON-able dict), one file per process,
         `process_<i>-of-<n>.json` (each process reads its own shard of the data);
  meta   JSON: the model config, for humans and for `restore`'s shape check messages.

Atomicity: Orbax writes a step into `<dir>/<step>.orbax-checkpoint-tmp` and renames it to
`<dir>/<step>` only after every item (and, multi-host, every process) has finished; readers
(`latest_step`, `restore`) never see the tmp directory, and leftovers of an interrupted save are
removed on the next start (`cleanup_tmp_directories`). On object stores without atomic rename
Orbax uses a commit-marker file instead (its `CommitFileTemporaryPath`).

Async: `save` returns once the arrays are copied to host memory; the writes continue in a
background thread, so training overlaps them. The data state is captured synchronously at the
call, so it matches the saved step. Call `wait()` before exiting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(ValueError):
    """The checkpoint's arrays do not match the shapes the current config builds."""


class DataStateHandler(ocp.CheckpointHandler):
    """Per-process JSON files for the data iterator state (grain's own Orbax handler expects a
    grain iterator object; our pipeline hands out a plain JSON-able dict, captured at save time)."""

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (epath.Path(directory) / name).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> Any:
        path = epath.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not path.exists():
            found = sorted(p.name for p in epath.Path(directory).iterdir())
            raise FileNotFoundError(f"no data state {path.name} in {directory} (found {found}); was the checkpoint "
                                    "written with a different number of processes?")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def structure(self, directory: epath.Path) -> None:  # pragma: no cover - interface
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        out[name] = tuple(getattr(leaf, "shape", np.shape(leaf)))
    return out


def shape_mismatches(saved, target) -> list[str]:
    """Human-readable differences between two trees of arrays / shape structs / metadata."""
    a, b = _flat_shapes(saved), _flat_shapes(target)
    lines = [f"{k}: checkpoint {a[k]} vs config {b[k]}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    lines += [f"{k}: in the checkpoint, not built by the config {a[k]}" for k in sorted(a.keys() - b.keys())]
    lines += [f"{k}: built by the config {b[k]}, missing in the checkpoint" for k in sorted(b.keys() - a.keys())]
    return lines


class Checkpointer:
    """Saves and restores (TrainState, data iterator state) under `directory`."""

    def __init__(self, directory: str | epath.Path, *, every_steps: int = 1000, keep: int = 3,
                 async_save: bool = True, model_config: mlc.ConfigDict | None = None):
        self.directory = epath.Path(directory)
        self.model_config = model_config
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataStateHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    @classmethod
    def from_config(cls, train_config: mlc.ConfigDict, model_config: mlc.ConfigDict | None = None) -> Checkpointer:
        k = train_config.checkpoint
        if not k.dir:
            raise ValueError("checkpoint.dir is empty: checkpoints are off")
        return cls(k.dir, every_steps=k.every_steps, keep=k.keep, async_save=k.async_save, model_config=model_config)

    def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it saved. Call with
        the state *after* `step` optimizer steps and the data state after `step` batches."""
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            # Snapshot now (json round trip = deep copy): the iterator moves on while we write.
            args["data"] = DataStateSave(json.loads(json.dumps(data_state)))
        meta = {"step": int(step)}
        if self.model_config is not None:
            meta["model_config"] = json.loads(self.model_config.to_json())
        args["meta"] = ocp.args.JsonSave(meta)
        return self.manager.save(int(step), args=ocp.args.Composite(**args), force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any] | None, int]:
        """(state, data_state or None, step) from `step` (default: the latest).

        `target` is the abstract state with shardings (`state.unboxed_abstract_state`): arrays
        come back in that layout, whatever mesh wrote them. Raises `IncompatibleCheckpointError`
        listing every mismatched shape / missing array before reading anything."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self.manager.item_metadata(step)
        saved = meta["state"]
        if saved is not None:
            bad = shape_mismatches(saved, target)
            if bad:
                raise IncompatibleCheckpointError(
                    f"checkpoint {self.directory / str(step)} does not fit the current config "
                    f"({len(bad)} mismatch(es)):\n  " + "\n  ".join(bad))
        items = {"state": ocp.args.StandardRestore(target)}
        has_data = (self.directory / str(step) / "data").exists()
        if has_data:
            items["data"] = DataStateRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["data"] if has_data else None), int(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Turns SIGTERM (and optionally other signals) into a flag the loop polls between steps:

        guard = PreemptionGuard()
        for ...:
            state, metrics = step(state, batch)
            if guard.should_stop(step_number):
                ckpt.save(step_number, state, it.get_state(), force=True); ckpt.close(); sys.exit(0)

    The handler itself only sets the flag (saving inside a signal handler could interrupt a
    step half-way). With several processes only some may receive the signal, and all must stop
    at the same step: `should_stop` then all-gathers the local flags (a small blocking host
    collective; a loop may call it every few steps instead of every step). JAX's own preemption
    notifier is not used: it listens for SIGTERM in C++, and this Python handler replaces it.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self._event = threading.Event()
        self._previous = {}
        for s in signals:
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: will checkpoint and stop after the current step", signum)
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after `step` (same answer on every process)."""
        del step  # kept in the signature for loops that log it / future sync-point use
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))

    def close(self) -> None:
        """Restores the previous signal handlers."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
