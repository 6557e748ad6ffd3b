"""Fused on-device group sampler with continuous batching."""

from reason_jax.sampling.memory import kv_cache_bytes, slots_for_kv_budget
from reason_jax.sampling.sampler import SampleOutput, SamplingParams, generate

__all__ = ["SampleOutput", "SamplingParams", "generate", "kv_cache_bytes", "slots_for_kv_budget"]
