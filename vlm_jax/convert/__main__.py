"""python -m vlm_jax.convert: the command line is `vlm_jax.convert.command` (see its docstring)."""

import sys

from vlm_jax.convert.command import main

if __name__ == "__main__":
    sys.exit(main())
