"""Ablation sweeps in the big_vision manner: one experiment file per question, one launcher.

    python -m vlm_jax.experiments.sweep --config=experiments/ablate_deepstack.py --workdir=runs/sweeps/deepstack

spec.py      the experiment file's interface (get_config / sweep / metrics / CLAIM / ARM), runs and their names
common.py    what the experiment files share: arg keys (seed, seeds, steps, smoke), step budgets, the smoke size
sweep.py     the launcher: trains each run (skipping finished ones, resuming interrupted ones), gathers results
measure.py   what a run is scored by: held-out results, extra evaluations on other worlds, train metrics, timing
results.py   statistics over seeds (mean, std, seed-paired or Welch intervals) and the Markdown report
plots.py     one PNG per metric: arm means with error bars, seeds as dots
"""
