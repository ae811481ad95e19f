"""The outer loop shared by RL and distillation: iterate, evaluate, log, checkpoint, stop on a signal.

Each method supplies one iteration (`step`), its held-out evaluation and the data state a checkpoint
keeps; the loop around them (metrics, periodic and final checkpoints, SIGTERM, the export and the
summary) is the same for both, so it lives here once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train import metrics as metrics_lib
from vlm_jax.train.loop import write_summary

Row = dict[str, float]


@dataclasses.dataclass
class LoopResult:
    state: Any
    iterations: int  # the last iteration run (== start when nothing ran)
    history: list[Row]
    last_eval: Row
    stopped_early: bool


def run_iterations(*, workdir: str, ckpt: Any, state: Any, start: int, iterations: int,
                   step: Callable[[Any, int], tuple[Any, Row]],
                   data_state: Callable[[int], Mapping[str, Any]],
                   log_line: Callable[[int, Row], str],
                   evaluate: Callable[[Any], Row] | None = None, eval_every: int = 0,
                   eval_at_start: bool = False, tensorboard: bool = True,
                   save_on_sigterm: bool = True) -> LoopResult:
    """Runs iterations start+1 .. `iterations`: `step(state, it)` -> (state, metrics row); every
    `eval_every` iterations and at the last one, `evaluate(params)` joins the row; the row is written
    (JSONL + TensorBoard) and `log_line(it, row)` printed; `ckpt` saves `data_state(it)` with the state
    on its schedule, and once more after the loop. With `eval_at_start`, a fresh run (start 0) first
    evaluates the starting params and writes that row as iteration 0: the curve's first point, and what
    a run's gain is measured from. A SIGTERM stops after the current iteration."""
    writer = metrics_lib.MetricWriter(workdir, tensorboard=tensorboard)
    guard = checkpoint_lib.PreemptionGuard() if save_on_sigterm else None
    history: list[Row] = []
    last_eval: Row = {}
    stopped_early = False
    it = start
    try:
        if evaluate is not None and eval_at_start and start == 0:
            start_eval = evaluate(state.params)
            writer.write(0, start_eval)
            print("iteration 0 (start): " + "  ".join(f"{k.removeprefix('eval/')} {v:.3f}"
                                                     for k, v in sorted(start_eval.items()) if v is not None),
                  flush=True)
        while it < iterations:
            t0 = time.perf_counter()
            state, row = step(state, it)
            it += 1
            if evaluate is not None and ((eval_every and it % eval_every == 0) or it == iterations):
                last_eval = evaluate(state.params)
                row.update(last_eval)
            row["time/iteration_seconds"] = time.perf_counter() - t0
            writer.write(it, row)
            history.append(row)
            print(log_line(it, row), flush=True)
            ckpt.save(it, state, data_state(it))
            if guard is not None and guard.should_stop(it):
                stopped_early = True
                break
    finally:
        writer.close()
        if guard is not None:
            guard.close()
    final_checkpoint(ckpt, it, state, data_state(it))
    return LoopResult(state, it, history, last_eval, stopped_early)


def final_checkpoint(ckpt: Any, iteration: int, state: Any, data_state: Any) -> None:
    """Saves the last iteration unless it is saved already, then waits for the writes."""
    if ckpt.latest_step() != iteration:
        ckpt.save(iteration, state, data_state, force=True)
    ckpt.close()


def close_run(workdir: str, summary: dict[str, Any], stopped_early: bool, export: Callable[[], str],
              last_eval: Mapping[str, float] | None) -> dict[str, Any]:
    """Ends a post-training run: after a stop signal only the summary (the checkpoint resumes it);
    otherwise the exported params' path and the last held-out eval join the summary. Writes summary.json."""
    if stopped_early:
        write_summary(workdir, summary)
        print(f"stopped by signal at iteration {summary['iterations']}; checkpoint saved. Run again to resume.",
              flush=True)
        return summary
    summary["final_params"] = export()
    if last_eval:
        summary["eval"] = last_eval
    write_summary(workdir, summary)
    return summary
