"""What a run learns from: prompts, their tokenizer, the verifier, and (for SFT) gold text.

`build_task(cfg)` turns the `data` / `verifier` config sections into a `Task`, so the loop
never branches on the dataset kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass
class Task:
    name: str
    tokenizer: Any
    train_source: Sequence[dict]  # random-access records
    eval_records: list[dict]
    verifier: str
    prompt_text: Callable[[dict], str]
    shuffle: bool
    gold_text: Callable[[dict, np.random.Generator], str] | None = None  # SFT targets
    # Every correct answer of a record, when the task can enumerate them (countdown can):
    # enables soft SFT targets.
    all_golds: Callable[[dict], Sequence[str]] | None = None


def build_task(cfg) -> Task:
    d = cfg.data
    template = d.prompt_template

    def prompt_text(record: dict) -> str:
        return template.format(prompt=record["prompt"])

    if d.task == "countdown":
        from reason_jax.data.countdown import (CountdownSource, CountdownSpec, all_solutions,
                                                countdown_tokenizer, eval_problems)

        spec = CountdownSpec(**dict(d.countdown))  # validated the same way by config.validate
        tok = countdown_tokenizer() if not d.tokenizer else _load_tok(d.tokenizer)

        def golds(record):
            return all_solutions(record["numbers"], record["target"], spec.max_target)

        def gold(record, rng):
            sols = golds(record)
            return sols[int(rng.integers(len(sols)))]

        return Task("countdown", tok, CountdownSource(cfg.seed, "train", spec=spec),
                    eval_problems(cfg.eval.num_problems, cfg.seed, spec),
                    cfg.verifier.name, prompt_text, shuffle=False, gold_text=gold,
                    all_golds=golds)

    tok_path = d.tokenizer or cfg.model.init_from  # import-hf copies the tokenizer along
    if not tok_path:
        raise ValueError(f"data.task={d.task!r} needs data.tokenizer (a tokenizer.json or "
                         f".model file, or the import-hf folder)")
    tok = _load_tok(tok_path)
    if d.task in ("jsonl", "parquet"):
        from reason_jax.data.prompts import load_prompts

        kw = dict(prompt_field=d.prompt_field, answer_field=d.answer_field or None,
                  skip_bad_rows=d.skip_bad_rows)
        train = load_prompts(d.path, **kw)
        evals = list(load_prompts(d.eval_path, **kw)) if d.eval_path else []
        evals = evals[: cfg.eval.num_problems]
        gold = None
        if d.answer_field:
            gold = lambda r, rng: str(r.get("answer", ""))  # noqa: E731
        return Task(d.task, tok, train, evals, cfg.verifier.name, prompt_text, d.shuffle, gold)
    if d.task == "seqio":
        from reason_jax.data.seqio_bridge import seqio_prompts

        train = seqio_prompts(d.seqio_task, "train")
        return Task("seqio", tok, train, [], cfg.verifier.name, prompt_text, d.shuffle)
    raise ValueError(f"unknown data.task {d.task!r}")


def _load_tok(path: str):
    from reason_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(path)


def encode_prompts(task: Task, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded prompt ids [B, S_max] and lengths [B] (the sampler buckets them)."""
    ids = [task.tokenizer.encode(task.prompt_text(r)) for r in records]
    lengths = np.asarray([len(x) for x in ids], np.int32)
    out = np.full((len(ids), max(1, int(lengths.max()))), task.tokenizer.pad_id, np.int32)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return out, lengths


def decode_completions(task: Task, tokens_NT: np.ndarray, lengths_N: np.ndarray,
                       truncated_N: np.ndarray) -> list[str]:
    """Completion text without its EOS token."""
    out = []
    for row, n, trunc in zip(tokens_NT, lengths_N, truncated_N):
        ids = row[: int(n) - (0 if trunc else 1)]
        out.append(task.tokenizer.decode(ids.tolist()))
    return out
