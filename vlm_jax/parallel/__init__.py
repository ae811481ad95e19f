"""Device mesh and logical-axis sharding rules."""

from vlm_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape
from vlm_jax.parallel.rules import (
    BATCH_AXES,
    RULES,
    batch_shardings,
    logical_sharding,
    param_shardings,
    replicated,
    sharding_context,
)

__all__ = [
    "BATCH_AXES",
    "MESH_AXES",
    "RULES",
    "batch_shardings",
    "logical_sharding",
    "make_mesh",
    "mesh_shape",
    "param_shardings",
    "replicated",
    "sharding_context",
]
