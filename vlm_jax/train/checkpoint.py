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

Failures: a save that fails raises `CheckpointError` ("checkpoint save failed: <path>: <cause>", one
line) from the next `save`/`check`/`wait`/`close` after the background write ends, so a loop that
calls `save` every step never trains on while saves fail. `restore` without a step reads the newest
intact checkpoint: an unreadable one (truncated or missing file, JSON that does not parse) is moved
aside to `<step>.unreadable` with one warning line, and `CheckpointError` says so when none is intact.
Orbax's own per-thread tracebacks for these failures are dropped from the log (hundreds of lines for
one bad file); the cause is in the one line instead. Paths are made absolute (TensorStore needs it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
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


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none could be read: one line naming the path and the cause."""


class _Unreadable(ValueError):
    """A checkpoint item that does not parse; the message names the item."""


def absolute_path(directory: str | os.PathLike) -> epath.Path:
    """`directory` as an absolute path (URLs such as gs://... unchanged): TensorStore rejects relative
    ones, and only in Orbax's background writer, long after `save` returned."""
    s = os.fspath(directory)
    if "://" in s:
        return epath.Path(s)
    return epath.Path(os.path.abspath(os.path.expanduser(s)))


def _cause(e: BaseException, limit: int = 400) -> str:
    """The root cause of `e` on one line: TensorStore's message sits at the bottom of Orbax's chain."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split())
    if len(text) > limit:
        text = text[:limit] + " ..."
    if isinstance(e, _Unreadable):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _OrbaxTracebacks(logging.Filter):
    """Drops the tracebacks Orbax logs from its worker threads (absl logger): one failed save or one
    truncated file gives one per array and thread, hundreds of interleaved lines, while `Checkpointer`
    reports the same failure in one line. Keeps the last cause for failures Orbax only logs."""

    def __init__(self):
        super().__init__()
        self.users = 0
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            e = record.exc_info[1]
            self.last = _cause(e) if e is not None else record.getMessage()
            return False
        return True

    def acquire(self) -> None:
        if self.users == 0:
            logging.getLogger("absl").addFilter(self)
        self.users += 1

    def release(self) -> None:
        self.users = max(self.users - 1, 0)
        if self.users == 0:
            logging.getLogger("absl").removeFilter(self)


_QUIET = _OrbaxTracebacks()


def _codes(tb) -> list:
    codes = []
    while tb is not None:
        codes.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    return codes


def _drop_orbax_leftovers() -> None:
    """After one array fails to read, Orbax closes its event loop with that checkpoint's other reads
    still running; each prints a traceback later, at garbage collection or exit (an unraisable
    coroutine, or TensorStore's callback onto the closed loop). Drops exactly those, from then on."""
    if getattr(sys.unraisablehook, "_vlm_jax", False):
        return
    unraisable, excepthook = sys.unraisablehook, sys.excepthook
    orbax = f"{os.sep}orbax{os.sep}"

    def on_unraisable(u) -> None:
        codes = _codes(u.exc_traceback) + [c for c in [getattr(u.object, "cr_code", None)] if c is not None]
        if not any(orbax in c.co_filename for c in codes):
            unraisable(u)

    def on_exception(kind, value, tb) -> None:
        closed = kind is RuntimeError and str(value) == "Event loop is closed"
        if not (closed and any(c.co_name == "call_soon_threadsafe" for c in _codes(tb))):
            excepthook(kind, value, tb)

    on_unraisable._vlm_jax = True
    sys.unraisablehook, sys.excepthook = on_unraisable, on_exception


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
        try:
            return json.loads(path.read_text())
        except ValueError as e:
            raise _Unreadable(f"data/{path.name}: {_cause(e)}") from None

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
        self.directory = absolute_path(directory)
        self.model_config = model_config
        self._pending: int | None = None  # the step of the last save, until its outcome is checked
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True,
            # Directories are made in `save`: made in the background, a failure (no permission, a file
            # in the way) leaves the writers waiting for them until a 5-minute timeout, cause unnamed.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        _QUIET.acquire()
        self._quiet = True
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "data": DataStateHandler(),
                               "meta": ocp.JsonCheckpointHandler()})
        except Exception as e:  # e.g. a regular file where the directory or one of its parents should be
            self._quiet = False
            _QUIET.release()
            raise CheckpointError(f"checkpoint directory unusable: {self.directory}: {_cause(e)}") from e

    @classmethod
    def from_config(cls, train_config: mlc.ConfigDict, model_config: mlc.ConfigDict | None = None) -> Checkpointer:
        k = train_config.checkpoint
        if not k.dir:
            raise ValueError("checkpoint.dir is empty: checkpoints are off")
        return cls(k.dir, every_steps=k.every_steps, keep=k.keep, async_save=k.async_save, model_config=model_config)

    def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None = None, *, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it saved. Call with
        the state *after* `step` optimizer steps and the data state after `step` batches. Raises
        `CheckpointError` when this save, or a finished earlier one, failed (see `check`)."""
        self.check()
        if self._pending is not None and (force or self.manager.should_save(int(step))):
            self._finish()  # Orbax waits for it anyway; this names the step that failed
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            # Snapshot now (json round trip = deep copy): the iterator moves on while we write.
            args["data"] = DataStateSave(json.loads(json.dumps(data_state)))
        meta = {"step": int(step)}
        if self.model_config is not None:
            meta["model_config"] = json.loads(self.model_config.to_json())
        args["meta"] = ocp.args.JsonSave(meta)
        try:
            saved = self.manager.save(int(step), args=ocp.args.Composite(**args), force=force)
        except Exception as e:
            raise self._save_error(step, e) from e
        if saved:
            self._pending = int(step)
        return saved

    def check(self) -> None:
        """Raises `CheckpointError` if the last save has finished and failed; never waits for a
        save in progress (cheap enough to call every step)."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self._finish()

    def _finish(self) -> None:
        """Waits for the last save and raises `CheckpointError` if it failed."""
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(step, e) from e
        path = self.directory / str(step)
        if not path.exists():  # Orbax logs (and does not raise) some failures of the final commit
            raise CheckpointError(f"checkpoint save failed: {path}: {_QUIET.last or 'not committed'}")

    def _save_error(self, step: int, e: BaseException) -> CheckpointError:
        return CheckpointError(f"checkpoint save failed: {self.directory / str(int(step))}: {_cause(e)}")

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any] | None, int]:
        """(state, data_state or None, step) from `step` (default: the newest intact checkpoint).

        `target` is the abstract state with shardings (`state.unboxed_abstract_state`): arrays
        come back in that layout, whatever mesh wrote them. Raises `IncompatibleCheckpointError`
        listing every mismatched shape / missing array before reading anything.

        Without `step`, a checkpoint that cannot be read (any read error; meta or data JSON that
        does not parse) is skipped for the next older one; once one is read, the skipped ones are
        moved aside to `<step>.unreadable` (so later saves of those steps are not blocked), with
        one warning line each. `CheckpointError` (one line) when none can be read, or `step` cannot."""
        steps = [int(step)] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        bad: list[tuple[int, str]] = []
        for s in steps:
            try:
                state, data_state = self._restore_step(target, s)
                error = None
            except IncompatibleCheckpointError:
                raise
            except Exception as e:  # Orbax / TensorStore / JSON: any failure to read means not intact
                state, data_state, error = None, None, _cause(e)
                _drop_orbax_leftovers()
            if not _everywhere(error is None):  # every process resumes from the same step
                error = error or "unreadable on another process"
            if error is None:
                self._set_aside(bad, s)
                return state, data_state, s
            if step is not None:
                raise CheckpointError(f"checkpoint unreadable: {self.directory / str(s)}: {error}")
            bad.append((s, error))
        raise CheckpointError(f"no intact checkpoint in {self.directory}: "
                              + "; ".join(f"step {s}: {error}" for s, error in bad))

    def _set_aside(self, bad: list[tuple[int, str]], resumed: int) -> None:
        for s, error in bad:
            path, aside = self.directory / str(s), self.directory / f"{s}.unreadable"
            n = 1
            while aside.exists():
                n += 1
                aside = self.directory / f"{s}.unreadable{n}"
            if jax.process_index() == 0:
                try:
                    path.rename(aside)
                except OSError as e:
                    raise CheckpointError(f"checkpoint {path} is unreadable ({error}) and cannot be moved aside: "
                                          f"{_cause(e)}") from e
            log.warning("checkpoint %s is unreadable (%s): moved to %s; resuming from step %d",
                        path, error, aside, resumed)
        if bad:
            _sync("vlm_jax_checkpoint_set_aside")
            self.manager.reload()

    def _restore_step(self, target: Any, step: int) -> tuple[Any, dict[str, Any] | None]:
        # meta first, although only humans use it: a truncated file there means a damaged checkpoint.
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise _Unreadable(f"meta: {_cause(e)}") from None
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise _Unreadable(f"meta: not this step's: {str(meta)[:100]}")
        saved = self.manager.item_metadata(step)["state"]
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
        return restored["state"], (restored["data"] if has_data else None)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk; `CheckpointError` if one failed."""
        if self._pending is not None:
            self._finish()
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves (`CheckpointError` if one failed) and releases the manager."""
        failed = True
        try:
            self.wait()
            failed = False
        finally:
            try:
                self.manager.close()
            except Exception:
                if not failed:  # else the save error from wait() is the one to report
                    raise
            finally:
                if self._quiet:
                    self._quiet = False
                    _QUIET.release()


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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
