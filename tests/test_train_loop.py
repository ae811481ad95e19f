"""The train loop end to end (`train_and_evaluate`): logs, export, evaluation, the warm-up stage of the
curriculum, exact resume across runs (and across the warm-up's end), and the recipe's stage chaining
(S0 trains only the merger; the next stage starts from it)."""

import importlib.util
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from tests.checkpoint_faults import fail_background_writes
from tests.helpers import max_abs_diff, metrics_rows
from vlm_jax.configs import recipe, synthetic_tiny
from vlm_jax.configs.experiment import model_config
from vlm_jax.inference.loading import load_processor_config
from vlm_jax.model.vlm import init_params
from vlm_jax.params.store import load_params, save_params
from vlm_jax.train import data as data_lib
from vlm_jax.train.checkpoint import CheckpointError
from vlm_jax.train.loop import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(c, steps):
    """Shrinks a tiny-scale experiment config to a few fast steps (schedule fixed at 6 steps)."""
    c.train.num_train_steps = steps
    c.train.optimizer.update(warmup_steps=2, decay_steps=6)
    c.train.checkpoint.update(every_steps=3, keep=2)
    c.data.pipeline.update(seq_len=128, batch_size=8, max_patches=512, max_grids=32)  # 8 rows: 8 test devices
    c.log.update(every_steps=1, progress=False, peak_flops_per_device=1e11)
    c.eval.tasks = ()
    if c.data.curriculum:  # the main job's curriculum: steps 1-2 one object, 3-4 two objects, then its world
        c.data.curriculum = tuple({**dict(stage), "steps": 2} for stage in c.data.curriculum)
    return c


def _final_params(workdir):
    return load_params(os.path.join(workdir, "final"))[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 uninterrupted steps, then a small evaluation."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    c = _small(synthetic_tiny.get_config(), 6)
    c.eval.update(tasks=("counting", "grounding"), num_per_task=3, batch_size=6, max_new_tokens=6,
                  num_visualizations=2)
    return workdir, train_and_evaluate(c, workdir)


def test_logs_export_and_evaluation(straight):
    workdir, summary = straight
    rows = [r for r in metrics_rows(workdir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "lr_llm", "tokens_per_second", "step_seconds", "mfu"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert any(k.startswith("task_loss/") for k in rows[-1])
    # The warm-up stage's world (box and point only) for steps 1-4, the main world after; a task keeps its name.
    warm = {"task_loss/ground_box", "task_loss/ground_point"}
    assert all({k for k in r if k.startswith("task_loss/")} <= warm for r in rows[:4])
    assert any({k for k in r if k.startswith("task_loss/")} - warm for r in rows[4:])
    assert rows[2]["lr_llm"] > rows[1]["lr_llm"] > rows[0]["lr_llm"] >= 0  # linear warmup from 0
    assert summary["steps"] == 6 and summary["skipped_steps"] == 0 and summary["resumed_from"] is None
    assert summary["first_loss"] == pytest.approx(rows[0]["loss"], abs=1e-4)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert json.load(open(os.path.join(workdir, "summary.json")))["steps"] == 6
    # Export: params, model config, tokenizer and the processor settings the model trained with.
    final = os.path.join(workdir, "final")
    assert {"model_config.json", "params", "tokenizer.json", "processor_config.json"} <= set(os.listdir(final))
    assert load_processor_config(workdir).max_pixels == 64 * 64
    # Evaluation on the held-out split, with baselines, JSON and PNGs.
    ev = summary["eval"]
    assert ev["tasks"]["counting"]["n"] == 3 and 0 <= ev["tasks"]["counting"]["exact"] <= 1
    assert "baseline" in ev["tasks"]["counting"] and ev["tasks"]["grounding"]["n"] == 3
    lo, hi = ev["tasks"]["counting"]["ci95"]  # the main job's config: intervals and the vision-off control
    assert 0 <= lo <= ev["tasks"]["counting"]["exact"] <= hi <= 1
    assert 0 <= ev["tasks"]["grounding"]["vision_off"] <= 1 and len(ev["vision_off"]["predictions"]) == 6
    assert os.path.exists(os.path.join(workdir, "eval", "results.json"))
    assert any(f.endswith(".png") for f in os.listdir(os.path.join(workdir, "eval")))  # boxes drawn
    assert any("eval/counting/exact" in r for r in metrics_rows(workdir))


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
def test_stop_and_resume_equals_uninterrupted_run(straight, tmp_path):
    # Stopped at step 3 inside the warm-up stage (4 steps), resumed across its end.
    workdir_a, _ = straight
    workdir_b = str(tmp_path / "b")
    train_and_evaluate(_small(synthetic_tiny.get_config(), 3), workdir_b)
    summary = train_and_evaluate(_small(synthetic_tiny.get_config(), 6), workdir_b)
    assert summary["resumed_from"] == 3 and summary["steps"] == 6
    loss_a = [r["loss"] for r in metrics_rows(workdir_a) if "loss" in r]
    loss_b = [r["loss"] for r in metrics_rows(workdir_b) if "loss" in r]
    assert len(loss_b) == 6
    np.testing.assert_allclose(loss_b, loss_a, rtol=0, atol=1e-6)
    assert max_abs_diff(_final_params(workdir_a), _final_params(workdir_b)) == 0.0


def _cli(cwd, *args):
    """`python -m vlm_jax.train` on the main job's config, shrunk like `_small`, run in `cwd`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0 "
                         "--xla_cpu_use_fusion_emitters=false")  # CPU_FAST_COMPILE, as XLA flags
    small = ["--config.train.optimizer.warmup_steps=1", "--config.eval.tasks=()", "--config.log.progress=False",
             "--config.data.pipeline.seq_len=128", "--config.data.pipeline.max_patches=512",
             "--config.data.pipeline.max_grids=32"]
    cmd = [sys.executable, "-m", "vlm_jax.train", f"--config={REPO}/vlm_jax/configs/synthetic_tiny.py", *small, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_resolves_a_relative_workdir(tmp_path):
    r = _cli(tmp_path, "--workdir=rel", "--config.train.num_train_steps=2", "--config.train.checkpoint.every_steps=1")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out and "error" not in out, out[-3000:]
    assert sorted(os.listdir(tmp_path / "rel" / "checkpoints")) == ["1", "2"]
    assert json.load(open(tmp_path / "rel" / "summary.json"))["workdir"] == str(tmp_path / "rel")

    # A checkpoint directory that cannot be made stops the run before training, in one line.
    (tmp_path / "blocker").write_text("")
    r = _cli(tmp_path, "--workdir=rel2", "--config.train.checkpoint.dir=blocker/ck")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"error: checkpoint directory unusable: {tmp_path}/blocker/ck: NotADirectoryError")


def test_failed_save_stops_the_run(tmp_path, monkeypatch):
    fail_background_writes(monkeypatch)
    workdir = str(tmp_path / "w")
    with pytest.raises(CheckpointError) as e:
        train_and_evaluate(_small(synthetic_tiny.get_config(), 6), workdir)
    # The first save (step 1) fails in the background; the step-3 save waits for it at the latest.
    assert str(e.value) == f"checkpoint save failed: {workdir}/checkpoints/1: OSError: [Errno 5] Input/output error"
    assert [r["step"] for r in metrics_rows(workdir) if "loss" in r] in ([1], [1, 2])
    assert not os.path.exists(os.path.join(workdir, "final"))


def _stage(name, steps):
    c = recipe.stage_config(name, size="tiny", scale="tiny")
    return _small(c, steps)


@pytest.mark.slow  # 27 to 133 s on 2 cores; `pytest -m slow` runs it
def test_recipe_s0_trains_only_the_merger_and_s1_starts_from_it(tmp_path):
    c0 = _stage("s0_align", 2)
    init_dir = tmp_path / "init"  # S0 starts from given params (at full scale: a converted checkpoint)
    m = model_config(c0)
    save_params(jax.device_get(nn.unbox(init_params(m, jax.random.key(3)))), m, init_dir)
    c0.init_from = str(init_dir)
    s0_dir = str(tmp_path / "s0")
    train_and_evaluate(c0, s0_dir)
    before, after = load_params(init_dir)[1], _final_params(s0_dir)
    changed = {k: max_abs_diff(before[k], after[k]) > 0 for k in before}
    mergers = [k for k in changed if k == "merger" or k.startswith("deepstack_mergers")]
    assert len(mergers) == 3 and all(changed.pop(k) for k in mergers)
    assert set(changed) == {"vision", "embed", "decoder"} and not any(changed.values()), changed  # frozen

    # S1 from S0's export; with every lr at 0 its params stay exactly S0's.
    c1 = _stage("s1_multimodal", 1)
    assert c1.init_from == "runs/s0_align"
    c1.init_from = s0_dir
    c1.train.optimizer.update(llm_lr=0.0, vision_lr=0.0, merger_lr=0.0)
    s1_dir = str(tmp_path / "s1")
    summary = train_and_evaluate(c1, s1_dir)
    assert summary["steps"] == 1
    assert max_abs_diff(after, _final_params(s1_dir)) == 0.0


@pytest.mark.parametrize("scale", recipe.SCALES)
@pytest.mark.parametrize("stage", recipe.ORDER)
def test_recipe_stage_files_load_and_validate(stage, scale):
    path = os.path.join(REPO, "vlm_jax", "configs", "recipe", f"{stage}.py")
    spec = importlib.util.spec_from_file_location(stage, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    size = "tiny" if scale == "tiny" else "8b"
    c = module.get_config(f"size={size},scale={scale}")
    s = recipe.STAGES[stage]
    assert c.data.pipeline.seq_len == (s.tiny_seq_len if scale == "tiny" else s.seq_len)
    o = c.train.optimizer
    assert (o.freeze_vision, o.freeze_merger, o.freeze_llm) == tuple(p not in s.trainable
                                                                   for p in ("vision", "merger", "llm"))
    assert c.data.pipeline.loss_normalization == ("token" if s.sft else "sqrt")
    assert c.init_from == (f"runs/{s.previous}" if s.previous else "")
    assert c.model.name == f"qwen3-vl-{size}"


def test_recipe_tiny_lengths_keep_the_full_scale_ratios():
    tiny = {name: recipe.stage_config(name, size="tiny", scale="tiny") for name in recipe.ORDER}
    lengths = {name: c.data.pipeline.seq_len for name, c in tiny.items()}
    assert lengths == {"s0_align": 256, "s1_multimodal": 256, "s2_long": 1024, "s3_ultralong": 8192,
                       "sft_32k": 1024, "sft_256k": 8192}
    for name, c in tiny.items():
        assert lengths[name] * 32 == recipe.STAGES[name].seq_len
        # The long rows take the chunked attention, whose memory grows linearly with the length.
        assert c.model.attention_impl == ("xla_chunked" if lengths[name] > 1024 else "xla")
    assert tiny["s3_ultralong"].data.pipeline.batch_size * 8192 == 32768  # a 32K-token step


@pytest.mark.slow
def test_a_32k_token_recipe_step_runs_on_cpu(tmp_path):
    """S3 at tiny scale: 4 rows of 8,192 tokens, one train step (about a minute on 2 cores)."""
    c = recipe.stage_config("s3_ultralong", size="tiny", scale="tiny")
    c.init_from = ""
    c.train.num_train_steps = 1
    c.train.optimizer.warmup_steps = 0
    c.train.parallel.update(data=4, fsdp=1, tensor=-1)  # 4 rows over the test's 8 host devices
    c.train.checkpoint.every_steps = 1
    c.log.update(progress=False, every_steps=1)
    summary = train_and_evaluate(c, str(tmp_path / "s3"))
    rows = metrics_rows(str(tmp_path / "s3"))
    assert summary["steps"] == 1 and np.isfinite(rows[-1]["loss"])
    tokens = rows[-1]["tokens_per_second"] * rows[-1]["step_seconds"]
    assert tokens > 8192, tokens  # more real tokens than one row holds (measured: 15,895 of the 32,768 slots)
    print(f"32K-token step: {rows[-1]['step_seconds']:.1f} s, {tokens:.0f} real tokens")


def test_recipe_full_scale_budgets_and_args():
    s0, s3 = recipe.stage_config("s0_align"), recipe.stage_config("s3_ultralong")
    assert s3.data.pipeline.seq_len == 262144 and s0.data.pipeline.seq_len == 8192
    # Steps follow the token budgets: 67B tokens over 4M-token global batches.
    rows = s0.data.pipeline.batch_size * recipe.REFERENCE_PROCESSES
    assert s0.train.num_train_steps == int(67e9 // (rows * 8192))
    sft = recipe.from_arg("sft_32k", "size=2b,thinking=True")
    assert sft.data.pipeline.thinking == "thinking" and sft.stage == "sft_32k_thinking"
    assert sft.train.optimizer.llm_lr == 1e-5 and sft.train.optimizer.vision_lr == 1e-6
    for arg, msg in [("size=8b,colour=red", "unknown key 'colour'"), ("thinking=maybe", "expected True or False"),
                     ("scale=huge", "unknown recipe scale")]:
        with pytest.raises(ValueError, match=msg):
            recipe.from_arg("sft_32k", arg)
    with pytest.raises(ValueError, match="SFT stages only"):
        recipe.from_arg("s1_multimodal", "thinking=True")
    with pytest.raises(ValueError, match="unknown recipe stage"):
        recipe.stage_config("s4")


def test_curriculum_config_is_checked():
    from vlm_jax.configs.experiment import validate

    def with_stage(stage):
        c = synthetic_tiny.get_config()
        c.data.curriculum = (*c.data.curriculum, stage)
        return c

    with pytest.raises(ValueError, match="colour"):
        validate(with_stage({"steps": 3, "world": {"max_objects": 1, "colour": "red"}}))
    with pytest.raises(ValueError, match=r"curriculum\[2\]\.steps=-1"):
        validate(with_stage({"steps": -1, "world": {}}))
    with pytest.raises(ValueError, match=r"curriculum\[2\] has unknown keys \['stpes'\]"):
        validate(with_stage({"stpes": 3, "world": {}}))


def test_curriculum_stages_are_read_in_order():
    c = synthetic_tiny.get_config()
    stages = data_lib.curriculum_data_configs(c.data, ("count", "ground_box"))
    assert [steps for steps, _ in stages] == [stage["steps"] for stage in c.data.curriculum]
    for (_, d), stage in zip(stages, c.data.curriculum, strict=True):
        world = d.sources.synthetic.world.to_dict()
        assert {k: world[k] for k in stage["world"]} == dict(stage["world"])
        assert world["question_first"] == 1.0  # the main world's keys the stage leaves alone
        assert tuple(d.pipeline.task_names) == ("count", "ground_box") and not d.curriculum
