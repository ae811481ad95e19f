"""python -m vlm_jax.eval: the command line is `vlm_jax.eval.command` (see its docstring)."""

import sys

from vlm_jax.eval.command import main

if __name__ == "__main__":
    sys.exit(main())
