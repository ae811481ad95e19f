"""Post-training configs (RL and distillation): the keys every `configs/posttrain/*.py` file shares.

    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_sapo.py          # tiny, from the zoo
    python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_sapo.py:8b       # released size

`base_config(size)`: "tiny" is the zoo student (`configs/zoo.py`: its model, processor and world), the
default init of tiny RL; a released size ("2b", "8b", "32b", "30b-a3b", ...) gives the same run at that
size, for validation (`validate`), not for a CPU.

    method         "rl" (`vlm_jax.posttrain.rl`) | "distill" (`vlm_jax.posttrain.distill`)
    name           run name; the CLI's default workdir is runs/posttrain/<name>
    size           "tiny" or a released model size (`vlm_jax.configs.model.SIZES`)
    init_from      the policy's start params (an export dir or a workdir with final/); "" = random init
    model, train   as in experiment configs; train.num_train_steps is set from the RL loop
                   (iterations x ppo_epochs x minibatches) and train.checkpoint.every_steps counts
                   iterations; checkpoint.dir "" = <workdir>/checkpoints
    data           tokenizer ("" = the synthetic world's), world (SyntheticWorld overrides; its task
                   mixture comes from `tasks`), processor (image processor keys, as the init was trained)
    tasks          prompt mixture: synthetic task -> weight (the train split; one reward per task,
                   `posttrain.rewards.reward_for`)
    rollout        prompts_per_iteration, group_size (G completions per prompt), max_new_tokens,
                   temperature (sampling is temperature-only, so the log-probs are on-policy), seq_len
                   (prompt + completion rows of the train batch), max_patches / max_grids (vision buffer
                   of one micro-batch: fixed shapes, one compile)
    loss           name (`policy_losses.POLICY_LOSSES`), options (its keyword options: clip eps, tau, beta,
                   aggregation, ...), scale_std (False: Dr.GRPO advantages, no division by the group std)
    filters        correct_threshold (a completion is correct when its reward >= it: the harness's
                   rule for 0/1 rewards and box IoU >= 0.5), max_pass_rate / min_pass_rate (keep prompts
                   with min < pass rate <= max: Qwen3-VL drops > 90% and all-wrong), dynamic_sampling
                   (DAPO: refill the batch with groups that carry signal) and max_rounds (rollout rounds
                   per iteration at most, the first included)
    iterations, ppo_epochs, minibatches   RL iterations; passes over each rollout batch; optimizer
                   updates per pass (GSPO: 4)
    eval           held-out evaluation (the eval harness on the world's held-out split): tasks (families),
                   split, num_per_task, every (iterations; 0 = only after the last), at_start (also
                   the starting params, as iteration 0), batch_size, max_new_tokens
    log            tensorboard; kl_to_start (report the k3 KL to the start params even when beta = 0:
                   one extra forward of the frozen start params per rollout batch)
    distill        teacher_from (the teacher's export), teacher_size ("" = the export's own model config; a
                   released size: that config, checked against the export), loss / options (the
                   on-policy loss, `distill_losses.DISTILL_LOSSES`), offpolicy ("logits": the data
                   pipeline's batches; "samples": teacher-generated replies), offpolicy_loss / offpolicy_options
                   ("ce" or a logit loss), offpolicy_steps then onpolicy_steps (iterations of each phase; their
                   sum is `iterations`), text_only (text tasks only, LLM backbone only): see
                   `vlm_jax.posttrain.distill`

Loss defaults and their sources: the project's POSTTRAIN reference notes. Learning rates at tiny scale
are ours (untuned); at released sizes 1e-6, as the SAPO / DAPO / DeepEyes recipes.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from vlm_jax.configs import experiment, train_base, zoo
from vlm_jax.configs import model as model_configs
from vlm_jax.configs.validate import check_keys
from vlm_jax.data import processor as processor_lib

METHODS = ("rl", "distill")
# Not released checkpoints: test and ablation sizes.
_NOT_RELEASED = ("tiny", "tiny-moe", "100m")
RELEASED_SIZES = tuple(s for s in model_configs.SIZES if s not in _NOT_RELEASED)
SIZES = ("tiny", *RELEASED_SIZES)
# Sections whose keys are checked by their own validators, or named by the user.
_FREE = ("model", "train", "data.world", "data.processor", "tasks", "loss.options", "distill.options",
         "distill.offpolicy_options")
# Verifiable tasks of the default world with a dense or exact reward (`posttrain.rewards.TASK_REWARDS`).
RL_TASKS = {"count": 2.0, "ground_box": 2.0, "ground_point": 1.0, "ocr": 1.0, "chart_value": 1.0}
RL_EVAL_FAMILIES = ("counting", "grounding", "pointing", "ocr", "chart")


def parse_size(arg: str | None) -> str:
    """The size of a config file's `get_config(arg)`: "" or None -> "tiny"; else a known size."""
    size = arg or "tiny"
    if size not in SIZES:
        raise ValueError(f"posttrain config arg {arg!r}: choose a size from {', '.join(SIZES)}")
    return size


def base_config(size: str = "tiny") -> mlc.ConfigDict:
    """Every post-training key with RL defaults at `size` (module docstring)."""
    size = parse_size(size)
    tiny = size == "tiny"
    c = mlc.ConfigDict()
    c.method = "rl"
    c.name = "rl"
    c.description = ""
    c.size = size
    zc = zoo.get_config("student")
    # Tiny: the zoo student export; released: the recipe's last SFT stage (its default workdir).
    c.init_from = zoo.export_dir("student") if tiny else "runs/sft_256k"
    if tiny:
        c.model = mlc.ConfigDict(zc.model.to_dict())
    else:
        c.model = mlc.ConfigDict(model_configs.get_config(size).to_dict())
        c.model.vision.attention_block = 4096  # as the recipe's full-scale stages

    t = c.train = train_base.base_config()
    o = t.optimizer
    o.schedule = "constant"
    o.warmup_steps = 0
    o.weight_decay = 0.01  # verl's actor default
    o.grad_clip_norm = 1.0
    if tiny:
        o.update(llm_lr=2e-5, merger_lr=2e-5, vision_lr=2e-6)
        t.remat_policy = "full"  # on CPU, recomputing beats storing every layer's activations
    else:
        o.update(llm_lr=1e-6, merger_lr=1e-6, vision_lr=1e-7)
        t.parallel.update(data=1, fsdp=-1)
        t.remat_policy = "dots"
    t.checkpoint.update(every_steps=10, keep=2)

    d = c.data = mlc.ConfigDict()
    d.tokenizer = ""
    d.world = {}
    d.processor = processor_lib.base_config()
    if tiny:  # the world (prompt layout included: questions before images) and settings the zoo student trained with
        d.world = {k: v for k, v in zc.data.sources.synthetic.world.items() if k != "tasks"}
        zp = zc.data.pipeline.processor
        d.processor.update(patch_size=zp.patch_size, min_pixels=zp.min_pixels, max_pixels=zp.max_pixels)
    c.tasks = dict(RL_TASKS)

    r = c.rollout = mlc.ConfigDict()
    r.prompts_per_iteration = 8 if tiny else 32
    r.group_size = 8 if tiny else 16  # Qwen3-VL, DAPO, DeepSeek-R1: 16
    r.max_new_tokens = 40 if tiny else 1024  # a tiny grounding reply is <= 34 tokens + <|im_end|>
    r.temperature = 1.0
    r.seq_len = 96 if tiny else 2048  # tiny prompts: <= 45 tokens (one 64 x 64 image = 16 tokens)
    r.max_patches = 2048 if tiny else 16384
    r.max_grids = 64

    lo = c.loss = mlc.ConfigDict()
    lo.name = "sapo"
    lo.options = {"tau_pos": 1.0, "tau_neg": 1.05}
    lo.scale_std = True

    f = c.filters = mlc.ConfigDict()
    f.correct_threshold = 0.5
    f.max_pass_rate = 0.9
    f.min_pass_rate = 0.0
    f.dynamic_sampling = True
    f.max_rounds = 4

    c.iterations = 100 if tiny else 500
    c.ppo_epochs = 1
    c.minibatches = 2 if tiny else 4
    if not tiny:
        t.grad_accum_steps = 4

    e = c.eval = mlc.ConfigDict()
    e.tasks = RL_EVAL_FAMILIES
    e.split = "eval"
    e.num_per_task = 50 if tiny else 200
    e.every = 25 if tiny else 50
    e.at_start = False  # also evaluate the starting params, logged as iteration 0
    e.batch_size = 32
    e.max_new_tokens = r.max_new_tokens

    lg = c.log = mlc.ConfigDict()
    lg.tensorboard = True
    lg.kl_to_start = True

    ds = c.distill = mlc.ConfigDict()
    # Tiny: the upcycled MoE teacher (the student's visual pathway, 32 experts, trained on). The zoo's
    # from-scratch `teacher` never learned grounding (0.021 against the student's 0.286), so it has
    # nothing to teach; the upcycled one leads the student on boxes (0.382) and charts (0.372 vs 0.344).
    ds.teacher_from = zoo.export_dir("teacher_upcycled") if tiny else ""
    ds.teacher_size = ""
    ds.loss = "reverse_kl_sampled"
    ds.options = {}
    ds.offpolicy = "logits"
    ds.offpolicy_loss = "forward_kl"
    ds.offpolicy_options = {}
    ds.offpolicy_steps = 0
    ds.onpolicy_steps = 0
    ds.text_only = True
    t.num_train_steps = num_updates(c)
    return c


def num_updates(c: mlc.ConfigDict) -> int:
    """Optimizer updates of the whole run: iterations x ppo_epochs x minibatches."""
    return int(c.iterations) * int(c.ppo_epochs) * int(c.minibatches)


def model_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked model config."""
    return experiment.model_config(c)


def train_config(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The validated, locked train config, num_train_steps = `num_updates(c)` (the lr schedule's length)."""
    return experiment.with_overrides(experiment.train_config(c), {"num_train_steps": max(num_updates(c), 1)})


def world_config(c: mlc.ConfigDict) -> dict[str, Any]:
    """SyntheticWorld overrides: `data.world` with the task mixture `tasks`."""
    world = c.data.world.to_dict() if hasattr(c.data.world, "to_dict") else dict(c.data.world)
    tasks = c.tasks.to_dict() if hasattr(c.tasks, "to_dict") else dict(c.tasks)
    return {**world, "tasks": tasks}


def processor_config(c: mlc.ConfigDict) -> dict[str, Any]:
    """The image processor settings (every key), for prompts and the exported params."""
    return processor_lib.get_config(c.data.processor).to_dict()


def validate(c: mlc.ConfigDict) -> None:
    """Unknown or missing keys and bad values fail naming the key. Builds no params (configs only; the
    RL checks sample one prompt per task)."""
    check_keys(c, base_config("tiny"), "config", free=_FREE)

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"invalid posttrain config: {msg}")

    need(c.method in METHODS, f"method={c.method!r} (expected one of {METHODS})")
    need(c.size in SIZES, f"size={c.size!r} (expected one of {SIZES})")
    mc = model_config(c)
    train_config(c)
    pc = processor_config(c)
    need(pc["patch_size"] == mc.vision.patch_size and pc["merge_size"] == mc.vision.spatial_merge_size,
         f"data.processor patch_size={pc['patch_size']}, merge_size={pc['merge_size']} differ from the model's "
         f"vision.patch_size={mc.vision.patch_size}, spatial_merge_size={mc.vision.spatial_merge_size}")
    mismatch = experiment.linked_key_mismatch(pc, mc, "data.processor", "model")  # rollouts build prompts too
    need(mismatch is None, mismatch)
    from vlm_jax.data.synthetic import SyntheticWorld
    from vlm_jax.eval import tasks as eval_tasks

    world = SyntheticWorld(world_config(c))  # checks the world keys and the task names
    e = c.eval
    if e.tasks:
        eval_tasks.check_task_names(list(e.tasks))
        need(e.split in world.eval_splits, f"eval.split={e.split!r}; the world's held-out splits: "
             f"{', '.join(world.eval_splits)}")
    need(e.num_per_task >= 0 and e.every >= 0, f"eval.num_per_task={e.num_per_task}, eval.every={e.every} "
         "must be >= 0")
    need(e.batch_size >= 1 and e.max_new_tokens >= 1, "eval.batch_size and eval.max_new_tokens must be >= 1")
    if c.method == "rl":
        _validate_rl(c, world, need)
    if c.method == "distill":
        from vlm_jax.posttrain import distill

        distill.validate(c)


def _validate_rl(c: mlc.ConfigDict, world: Any, need) -> None:
    from vlm_jax.eval import tasks as eval_tasks
    from vlm_jax.posttrain import rewards
    from vlm_jax.posttrain.objectives import PolicyObjective

    r, f = c.rollout, c.filters
    need(r.prompts_per_iteration >= 1, f"rollout.prompts_per_iteration={r.prompts_per_iteration} must be >= 1")
    need(r.group_size >= 2, f"rollout.group_size={r.group_size} must be >= 2 (group-normalised advantages)")
    need(r.max_new_tokens >= 1 and r.temperature > 0,
         f"rollout.max_new_tokens={r.max_new_tokens} must be >= 1 and temperature={r.temperature} > 0")
    need(r.seq_len > r.max_new_tokens, f"rollout.seq_len={r.seq_len} leaves no room for a prompt before "
         f"max_new_tokens={r.max_new_tokens}")
    need(r.max_patches >= 1 and r.max_grids >= 1, "rollout.max_patches and rollout.max_grids must be >= 1")
    need(c.iterations >= 1 and c.ppo_epochs >= 1 and c.minibatches >= 1,
         f"iterations={c.iterations}, ppo_epochs={c.ppo_epochs}, minibatches={c.minibatches} must be >= 1")
    rows = r.prompts_per_iteration * r.group_size
    k = c.train.grad_accum_steps
    need(rows % (c.minibatches * k) == 0, f"the {rows} completions of an iteration (prompts_per_iteration x "
         f"group_size) must split into minibatches={c.minibatches} x train.grad_accum_steps={k} equal parts")
    need(-1.0 <= f.min_pass_rate < f.max_pass_rate <= 1.0,
         f"filters: need -1 <= min_pass_rate ({f.min_pass_rate}) < max_pass_rate ({f.max_pass_rate}) <= 1")
    need(f.max_rounds >= 1, f"filters.max_rounds={f.max_rounds} must be >= 1")
    options = c.loss.options.to_dict() if hasattr(c.loss.options, "to_dict") else dict(c.loss.options)
    try:
        PolicyObjective(c.loss.name, options, temperature=r.temperature)  # name and options
    except ValueError as e:
        raise ValueError(f"invalid posttrain config: loss: {e}") from e
    for task in world.task_names:  # every task's prompts can be built and scored
        sample = eval_tasks.item_from_sample(world.sample(0, "train", task=task)).to_sample()
        rewards.reward_for(sample)
