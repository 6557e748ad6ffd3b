"""SFT soft targets: at each prefix of the drawn answer, the share of all correct answers that
continue with each token (reason_jax.run.sft.soft_targets)."""

import numpy as np
import pytest

from reason_jax.config.loading import load_config
from reason_jax.run.sft import soft_targets
from reason_jax.run.task import build_task


def _reference(golds_ids, target_ids, T, V):
    """The definition, one prefix at a time."""
    out = np.zeros((T, V), np.float32)
    for t, tid in enumerate(target_ids):
        nxt = [g[t] for g in golds_ids if len(g) > t and g[:t] == list(target_ids[:t])]
        if nxt:
            for token in nxt:
                out[t, token] += 1.0 / len(nxt)
        else:
            out[t, tid] = 1.0
    return out


@pytest.fixture(scope="module")
def task():
    return build_task(load_config(None, []))


def test_worked_example(task):
    tok = task.tokenizer
    eos = tok.eos_ids[0]
    record = {"prompt": "3,7,9:090=", "numbers": [3, 7, 9], "target": 90}
    # golds: (3+7)*9, (7+3)*9, 9*(3+7), 9*(7+3)
    drawn = tok.encode("(3+7)*9") + [eos]
    out = soft_targets(task, record, drawn, 16, {})
    idx = tok.encode
    assert out[0, idx("(")[0]] == out[0, idx("9")[0]] == 0.5  # two answers open each way
    assert out[1, idx("3")[0]] == out[1, idx("7")[0]] == 0.5  # after "(": 3 or 7 first
    assert out[2, idx("+")[0]] == 1.0  # after "(3" only one answer remains
    assert out[7, eos] == 1.0 and out[8:].sum() == 0.0
    np.testing.assert_allclose(out[:8].sum(-1), 1.0)


def test_matches_definition_on_random_problems(task):
    tok = task.tokenizer
    eos = tok.eos_ids[0]
    rng = np.random.default_rng(0)
    cache: dict = {}
    for i in range(40):
        record = task.train_source[i]
        golds = [tok.encode(g) + [eos] for g in task.all_golds(record)]
        drawn = golds[int(rng.integers(len(golds)))]
        if i % 5 == 0:  # a wrong answer: its prefix leaves no gold, one-hot from there on
            drawn = tok.encode("1+2*3") + [eos]
        got = soft_targets(task, record, drawn, 16, cache)
        np.testing.assert_allclose(got, _reference(golds, drawn, 16, tok.vocab_size), atol=1e-6)
    # Same answer set, other number order: one cache entry.
    record = dict(task.train_source[0])
    record["numbers"] = record["numbers"][::-1]
    before = len(cache)
    soft_targets(task, record, tok.encode(task.all_golds(record)[0]) + [eos], 16, cache)
    assert len(cache) == before
