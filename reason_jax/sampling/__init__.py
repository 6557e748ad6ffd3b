"""Fused on-device group sampler."""

from reason_jax.sampling.sampler import SampleOutput, generate

__all__ = ["SampleOutput", "generate"]
