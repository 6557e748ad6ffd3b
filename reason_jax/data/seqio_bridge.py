"""Use a registered seqio Task (or Mixture) as a prompt source.

seqio is an optional extra (``pip install 'reason-jax[seqio]'``; it pulls TensorFlow), so it is
imported only when this bridge is called. The bridge reads one split of the task once, in
order, turns every example into a prompt record and returns a
:class:`~reason_jax.data.prompts.PromptDataset`; shuffling, epochs, per-host sharding and
checkpointable state then come from :mod:`reason_jax.data.pipeline` exactly as for files.
Reading the split up front keeps resumption exact (a tf.data iterator has no cheap random
access) and suits prompt sets, which are small next to pre-training corpora; use
``max_examples`` to cap a large split.

Text features are taken from ``<feature>_pretokenized`` when a ``tokenize`` preprocessor left
one, else from the feature itself (bytes are decoded as UTF-8; token ids are decoded with the
feature's seqio vocabulary), because reason-jax tokenises prompts with the policy's tokenizer.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

import numpy as np

from reason_jax.data.prompts import PromptDataset

__all__ = ["import_seqio", "seqio_prompts"]

_PRETOKENIZED = "_pretokenized"


def import_seqio():
    """Import seqio or raise an ImportError that says how to install it."""
    try:
        import seqio
    except ImportError as e:
        raise ImportError(
            "the seqio bridge needs the optional 'seqio' extra: pip install 'reason-jax[seqio]' "
            "(it installs seqio and TensorFlow)"
        ) from e
    return seqio


def _to_python(value: Any) -> Any:
    """numpy/bytes values from ``as_numpy_iterator`` -> plain JSON-like Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_to_python(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _to_python(v) for k, v in value.items()}
    return value


def _feature_text(task, example: Mapping[str, Any], feature: str) -> str:
    """The text of ``feature``: its pretokenized twin, a string, or decoded token ids."""
    if feature + _PRETOKENIZED in example:
        value = example[feature + _PRETOKENIZED]
    elif feature in example:
        value = example[feature]
    else:
        raise KeyError(
            f"seqio task {task.name!r} has no feature {feature!r}; features: {sorted(example)}"
        )
    if isinstance(value, (bytes, str)):
        return value.decode("utf-8") if isinstance(value, bytes) else value
    ids = np.asarray(value)
    if ids.dtype.kind in "iu":
        spec = task.output_features.get(feature)
        if spec is None:
            raise ValueError(
                f"feature {feature!r} of task {task.name!r} holds token ids but the task has no "
                "output feature (vocabulary) to decode them with"
            )
        return spec.vocabulary.decode(ids.tolist())
    raise TypeError(f"feature {feature!r} of task {task.name!r} is not text ({ids.dtype})")


def seqio_prompts(
    task: Any,
    split: str = "train",
    *,
    prompt_feature: str = "inputs",
    answer_feature: str | None = None,
    max_examples: int | None = None,
    sequence_length: Mapping[str, int] | None = None,
) -> PromptDataset:
    """Read one split of a seqio Task/Mixture into prompt records.

    Args:
        task: a registered task or mixture name, or a ``seqio.Task`` / ``seqio.Mixture``.
        split: the split to read (in order, one epoch, unshuffled: the pipeline shuffles).
        prompt_feature: feature holding the prompt text; stored as ``record["prompt"]``.
        answer_feature: optional feature holding the reference answer (e.g. ``"targets"``);
            stored as ``record["answer"]`` (text), the math verifier's field.
        max_examples: read at most this many examples.
        sequence_length: passed to ``get_dataset`` for tasks whose preprocessors need it;
            None means no truncation.

    Returns:
        A :class:`PromptDataset`. Every other feature is passed through as a plain Python
        value (bytes -> str, arrays -> lists); the prompt and answer features (and their
        ``_pretokenized`` twins) appear only as ``prompt`` / ``answer``.
    """
    seqio = import_seqio()
    if isinstance(task, str):
        task = seqio.get_mixture_or_task(task)
    dataset = task.get_dataset(
        sequence_length=sequence_length,
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=False,
    )
    consumed = {prompt_feature, prompt_feature + _PRETOKENIZED}
    if answer_feature is not None:
        consumed |= {answer_feature, answer_feature + _PRETOKENIZED}
    records = []
    for example in itertools.islice(dataset.as_numpy_iterator(), max_examples):
        record = {k: _to_python(v) for k, v in example.items() if k not in consumed}
        record["prompt"] = _feature_text(task, example, prompt_feature)
        if answer_feature is not None:
            record["answer"] = _feature_text(task, example, answer_feature)
        records.append(record)
    return PromptDataset(records, path=f"seqio:{task.name}:{split}")
