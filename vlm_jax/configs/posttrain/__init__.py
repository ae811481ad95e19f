"""Post-training configs: `base.py` (shared keys), rl_*.py (RL with one policy loss each),
distill_offpolicy.py / distill_onpolicy.py (strong-to-weak distillation; shared keys in distill_base.py)."""
