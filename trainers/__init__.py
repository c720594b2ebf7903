"""Trainers: the policy-optimisation side of labrl (pure math in `trainers.grpo`)."""
