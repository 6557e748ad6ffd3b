"""Evaluation: pass@k / maj@k metrics and the eval.json summary."""

from reason_jax.eval.metrics import majority_vote, maj_at_k, mean_pass_at_k, pass_at_k, summarise

__all__ = ["majority_vote", "maj_at_k", "mean_pass_at_k", "pass_at_k", "summarise"]
