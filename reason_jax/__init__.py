"""reason-jax: JAX/TPU-native RL from verifiable rewards for reasoning models.

Subpackages are imported lazily so that `import reason_jax` stays cheap (the verifier
workers import it without JAX).
"""

__version__ = "0.1.0"
