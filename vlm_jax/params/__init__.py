"""Model parameters outside training.

`count`: parameter counts from shapes alone (`python -m vlm_jax.params` prints them per size).
`store`: params dirs on disk (`model_config.json` + `params/`), written by export and conversion and
read by inference, evaluation and the next training stage.
"""
