"""Launchers for multi-host runs of `python -m vlm_jax.train`: a TPU VM slice (`tpu_vm`) and a SLURM GPU
cluster (`slurm`). Both check the config against the devices of the launch first (`checks`) and print the
exact commands with `--dry_run`; see README.md here."""
