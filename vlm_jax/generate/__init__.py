"""`python -m vlm_jax.generate`: the generation command line (`__main__`).

The library it runs is `vlm_jax.inference`: `inference.generate.generate` (prefill + decode),
`inference.prompt` (chat messages and media -> prompt tokens and pixels), `inference.loading`.
"""
