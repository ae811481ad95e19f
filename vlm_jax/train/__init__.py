"""Training: optimizer, losses, train state, the jitted step, checkpoints."""

from vlm_jax.train.checkpoint import Checkpointer, CheckpointError, IncompatibleCheckpointError, PreemptionGuard
from vlm_jax.train.optimizer import build_optimizer, lr_schedules, param_labels, trainable_mask
from vlm_jax.train.state import (
    TrainState,
    init_train_state,
    state_shardings,
    train_state_from_params,
    unboxed_abstract_state,
)
from vlm_jax.train.step import (
    BATCH_KEYS,
    CPU_FAST_COMPILE,
    NonFiniteAbort,
    check_skips,
    global_batch_shapes,
    make_train_step,
    put_batch,
    stack_microbatches,
)

__all__ = [
    "BATCH_KEYS",
    "CPU_FAST_COMPILE",
    "CheckpointError",
    "Checkpointer",
    "IncompatibleCheckpointError",
    "NonFiniteAbort",
    "PreemptionGuard",
    "TrainState",
    "build_optimizer",
    "check_skips",
    "global_batch_shapes",
    "init_train_state",
    "lr_schedules",
    "make_train_step",
    "param_labels",
    "put_batch",
    "stack_microbatches",
    "state_shardings",
    "train_state_from_params",
    "trainable_mask",
    "unboxed_abstract_state",
]
