"""The seqio bridge, with a tiny in-memory Task (skipped when seqio is not installed)."""

import pytest


def test_missing_seqio_gives_clear_error(monkeypatch):
    import builtins

    from reason_jax.data import seqio_bridge

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "seqio":
            raise ImportError("No module named 'seqio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"reason-jax\[seqio\]"):
        seqio_bridge.seqio_prompts("any_task")


def test_seqio_task_as_prompt_source():
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    from reason_jax.data.pipeline import prompt_iterator
    from reason_jax.data.seqio_bridge import seqio_prompts

    questions = ["1+1=", "2+3=", "4*4="]
    answers = ["2", "5", "16"]

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": questions, "targets": answers, "difficulty": [1, 2, 3]}
        )

    name = "reason_jax_test_tiny_prompts"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocab = seqio.PassThroughVocabulary(size=0)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[],
        output_features={
            "inputs": seqio.Feature(vocab, dtype=tf.string, rank=0),
            "targets": seqio.Feature(vocab, dtype=tf.string, rank=0),
        },
    )
    try:
        ds = seqio_prompts(name, "train", answer_feature="targets")
        assert ds.records == [
            {"prompt": q, "answer": a, "difficulty": d}
            for q, a, d in zip(questions, answers, [1, 2, 3])
        ]
        assert len(seqio_prompts(name, max_examples=2)) == 2
        batch = next(prompt_iterator(ds, batch_size=3, shard_index=0, shard_count=1))
        assert sorted(r["prompt"] for r in batch) == sorted(questions)
    finally:
        seqio.TaskRegistry.remove(name)
