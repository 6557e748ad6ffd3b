"""Fused on-device group sampler."""

from reason_jax.sampling.sampler import DEFAULT_BUCKETS, SampleOutput, bucket_for, generate

__all__ = ["DEFAULT_BUCKETS", "SampleOutput", "bucket_for", "generate"]
