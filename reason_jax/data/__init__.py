"""Data: prompt sources, the built-in countdown task, grain pipelines, bucketing.

Modules (one concept each):

- :mod:`~reason_jax.data.countdown` - the built-in countdown task (generator, solutions,
  train/eval split, shipped tokenizer).
- :mod:`~reason_jax.data.prompts` - JSONL / Parquet prompt files -> prompt records.
- :mod:`~reason_jax.data.pipeline` - checkpointable, sharded grain iterator over records.
- :mod:`~reason_jax.data.bucketing` - prompt length buckets and left padding.
- :mod:`~reason_jax.data.seqio_bridge` - a registered seqio Task as a prompt source.
- :mod:`~reason_jax.data.build_countdown_tokenizer` - rebuilds ``assets/countdown.model``.

The main names are re-exported here lazily, so ``import reason_jax.data`` does not import grain
or numpy until they are used.
"""

import importlib

_EXPORTS = {
    "CountdownSource": "countdown",
    "all_solutions": "countdown",
    "countdown_tokenizer": "countdown",
    "eval_problems": "countdown",
    "format_prompt": "countdown",
    "generate_problem": "countdown",
    "is_eval_problem": "countdown",
    "BadRowError": "prompts",
    "PromptDataset": "prompts",
    "load_prompts": "prompts",
    "PromptBatchIterator": "pipeline",
    "prompt_iterator": "pipeline",
    "PromptTooLongError": "bucketing",
    "bucket_length": "bucketing",
    "left_pad": "bucketing",
    "pad_prompts": "bucketing",
    "seqio_prompts": "seqio_bridge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
