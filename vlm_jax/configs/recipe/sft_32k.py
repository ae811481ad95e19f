"""Recipe stage `sft_32k`: see `vlm_jax/configs/recipe/__init__.py`.

Arg: SIZE, or size=...,scale=full|tiny,thinking=True|False."""

from vlm_jax.configs import recipe


def get_config(arg: str | None = None):
    return recipe.from_arg("sft_32k", arg)
