"""Post-training: building blocks as pure functions, and the loops built from them.

- `aggregation`: per-token losses [B, T] under a mask -> one scalar (token_mean, seq_mean_token_mean, ...).
- `policy_losses`: RL policy losses on log-probs (GRPO/DAPO, GSPO, GSPO-token, SAPO), `get_policy_loss`.
- `advantages`: group-normalised advantages, pass-rate filtering, DAPO dynamic sampling.
- `distill_losses`: forward / reverse KL and GKD's generalized JSD on logits, sampled reverse KL,
  `get_distill_loss`.
- `rewards`: verifiable rewards, pure functions of (sample, completion text).
- `registry`: name -> loss lookup with option checking, shared by both getters.
- `objectives`: `PolicyObjective`, `DistillObjective`: those losses as `make_train_step(loss_fn=...)` losses.
- `rollout`: G sampled completions per prompt with their log-probs, and the train batch replaying them.
- `rl`: the RL loop (`python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/rl_*.py`).
- `distill`: strong-to-weak distillation, off-policy then on-policy
  (`python -m vlm_jax.posttrain --config=vlm_jax/configs/posttrain/distill_*.py`).

Formulas, defaults and sources: the project's POSTTRAIN reference notes.
"""
