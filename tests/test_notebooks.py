"""The colab/ notebooks: each `.ipynb` is its jupytext `# %%` script (what reviews read) with the outputs
stripped, has a Colab badge and a papermill `parameters` cell, and runs to the end at SMOKE size with the
artefacts it promises.

After editing a script, regenerate its notebook: `jupytext --to ipynb colab/<name>.py` (a paired
notebook opened in Jupyter syncs itself; clear its outputs before committing).

Each notebook runs under papermill in a fresh python3 kernel of this environment, in its own temporary
directory, with JAX on one CPU device and XLA's fast-compile options (`train.step.CPU_FAST_COMPILE`),
since compiles, not steps, are most of a smoke run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLAB = REPO / "colab"
BADGE = "https://colab.research.google.com/github/vlm-jax/vlm_jax/blob/main/colab/{name}.ipynb"

# name -> files the SMOKE run must leave in its working directory. Runs in this order.
NOTEBOOKS = {
    "quickstart": ("runs/colab/quickstart/hf/config.json", "runs/colab/quickstart/params/model_config.json",
                   "runs/colab/quickstart/grounding.png"),
    "train_synthetic": ("runs/colab/train_synthetic/metrics.jsonl", "runs/colab/train_synthetic/eval/results.json",
                        "runs/colab/train_synthetic/curves.png", "runs/colab/train_synthetic/final/model_config.json"),
    "posttrain_rl": ("runs/colab/posttrain_rl/metrics.jsonl", "runs/colab/posttrain_rl/reward_curve.png",
                     "runs/colab/posttrain_rl/rollout.png"),
    # Reads a fabricated demo sweep it writes itself at SMOKE size (2 arms x 3 seeds, nothing trained).
    "sweep_results": ("runs/colab/sweep_results/fabricated_demo_sweep/results.json",
                      "runs/colab/sweep_results/table.md", "runs/colab/sweep_results/table.csv",
                      "runs/colab/sweep_results/plots/heldout_counting.png",
                      "runs/colab/sweep_results/plots/train_final_loss.png"),
}
# Notebooks kept in sync but not executed here, with the reason (MaxText's CI keeps such a list too).
SKIP_EXECUTION: dict[str, str] = {}

# XLA flags of the kernels: one CPU device (not the 8 of conftest.py) and CPU_FAST_COMPILE.
KERNEL_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_its_script_without_outputs(name):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    assert _cells(committed) == _cells(jupytext.read(COLAB / f"{name}.py")), (
        f"colab/{name}.ipynb differs from colab/{name}.py: run `jupytext --to ipynb colab/{name}.py`")
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"colab/{name}.ipynb has outputs"
    assert BADGE.format(name=name) in committed.cells[0].source and committed.cells[0].cell_type == "markdown"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and re.search(r"^SMOKE = False\b", params[0].source, re.M), (
        "one papermill parameters cell with SMOKE = False")
    assert any('IN_COLAB = "google.colab" in sys.modules' in c.source for c in code[:2]), "install cell"


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n not in SKIP_EXECUTION])
def test_notebook_runs_at_smoke_size(name, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", KERNEL_XLA_FLAGS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    papermill.execute_notebook(str(COLAB / f"{name}.ipynb"), str(tmp_path / f"{name}.out.ipynb"),
                               parameters={"SMOKE": True}, kernel_name="python3", cwd=str(tmp_path),
                               progress_bar=False, log_output=False)
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
    missing = [f for f in NOTEBOOKS[name] if not (tmp_path / f).is_file()]
    assert not missing, f"{name} did not write {missing}"
