"""`reason-jax eval` and `reason-jax sample`: the policy of a workdir's checkpoint on prompts."""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from reason_jax import paths
from reason_jax.config.resolve import verifier_options
from reason_jax.eval.metrics import summarise
from reason_jax.sampling import generate
from reason_jax.sharding.host_arrays import to_local
from reason_jax.run.rollout import global_prompts
from reason_jax.run.task import decode_completions


def _restore(cfg, workdir: str, step: int | None):
    from reason_jax.run.loop import Run

    run = Run(cfg, workdir)
    restored = run.ckpt.restore(run.abstract_state(), step)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first")
    got_step, state, _ = restored
    params, _ = run.policy.to_rollout(state.params)
    return run, got_step, params


def _generate_rows(run, params, records, *, n, temperature, top_p, max_new_tokens, seed):
    cfg, task = run.cfg, run.task
    g_tokens, g_lengths = global_prompts(task, records, cfg.data.buckets, run.mesh)
    out = generate((run.policy.graphdef, params), g_tokens, g_lengths, group_size=n,
                   max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p if top_p < 1 else None, eos_ids=task.tokenizer.eos_ids,
                   seed=seed, pad_id=task.tokenizer.pad_id, buckets=cfg.data.buckets,
                   max_rows=cfg.rollout.max_rows or None,
                   kv_cache_gb=cfg.rollout.kv_cache_gb or None)
    host = to_local({"tokens": out.tokens, "lengths": out.lengths, "truncated": out.truncated})
    return decode_completions(task, host["tokens"], host["lengths"], host["truncated"])


def score_policy(run, params, pool, *, greedy: bool = True) -> dict[str, Any]:
    """pass@1 (mean over k samples), unbiased pass@k, maj@k and (with `greedy`) greedy
    accuracy of `params` (rollout layout) on the task's held-out prompts (`eval.*` keys).

    Used by `reason-jax eval` and, every `eval.every` RL steps, by the training loop: the same
    prompts, seeds and sampler each time, so the curve moves only with the policy.
    """
    cfg, e = run.cfg, run.cfg.eval
    records = list(run.task.eval_records)[: e.num_problems]
    if not records:
        raise ValueError("this task has no held-out prompts (set data.eval_path)")
    # Pad the last batch to full size (the mesh needs equal shards); padded rows are dropped.
    bs = e.batch_size // jax.process_count()
    n_real = len(records)
    records = records + [records[-1]] * (-len(records) % bs)
    results = []
    T = cfg.rollout.max_new_tokens
    timeout = cfg.verifier.timeout_s
    opts = verifier_options(cfg)
    for i in range(0, len(records), bs):
        chunk = records[i: i + bs]
        sampled = _generate_rows(run, params, chunk, n=e.k, temperature=e.temperature,
                                 top_p=e.top_p, max_new_tokens=T, seed=cfg.seed + 1000 + i)
        rec_k = [r for r in chunk for _ in range(e.k)]
        s = pool.score(run.task.verifier, sampled, rec_k, timeout_s=timeout, **opts)
        g = None
        if greedy:
            texts = _generate_rows(run, params, chunk, n=1, temperature=0.0, top_p=1.0,
                                   max_new_tokens=T, seed=0)
            g = pool.score(run.task.verifier, texts, chunk, timeout_s=timeout, **opts)
        for j, _ in enumerate(chunk):
            if i + j >= n_real:
                break
            infos = s.infos[j * e.k: (j + 1) * e.k]
            row = {"correct": [info["status"] == "ok" for info in infos],
                   "answers": [_hashable(info.get("extracted")) for info in infos],
                   "task": run.task.name}
            if g is not None:
                row["greedy_correct"] = g.infos[j]["status"] == "ok"
            results.append(row)
    out = summarise(results, e.k)
    out["temperature"] = e.temperature
    return out


def eval_file(step: int | None) -> str:
    """`eval.json` for the latest checkpoint; `eval-N.json` for an explicit `--step N`, so
    measuring an older checkpoint never overwrites the latest one's numbers."""
    return "eval.json" if step is None else f"eval-{int(step)}.json"


def evaluate(cfg, workdir: str, *, step: int | None = None, write: bool = True) -> dict[str, Any]:
    """`reason-jax eval`: score_policy on a checkpoint -> WORKDIR/eval.json (eval-N.json)."""
    from reason_jax.verifiers import VerifierPool

    run, got_step, params = _restore(cfg, workdir, step)
    with VerifierPool(cfg.verifier.num_workers) as pool:
        out = score_policy(run, params, pool)
    out["step"] = got_step
    if write and run.is_main:
        paths.write_text_atomic(paths.join(workdir, eval_file(step)),
                                json.dumps(out, indent=2))
    return out


def training_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The eval/* scalars the training loop logs (metrics.jsonl, TensorBoard, curves.png)."""
    k = summary.get("k")
    out = {"eval/pass@1": summary["pass@1"], "eval/k": k}
    if k and f"pass@{k}" in summary:
        out["eval/pass@k"] = summary[f"pass@{k}"]
    if k and f"maj@{k}" in summary:
        out["eval/maj@k"] = summary[f"maj@{k}"]
    return out


def _hashable(x):
    if isinstance(x, list):
        return tuple(x)
    if isinstance(x, dict):
        return json.dumps(x, sort_keys=True)
    return x


def sample(cfg, workdir: str, prompt: str, *, n: int = 4, temperature: float = 1.0,
           max_new_tokens: int | None = None, step: int | None = None) -> list[str]:
    run, _, params = _restore(cfg, workdir, step)
    # One prompt, replicated so every data shard has a row.
    from reason_jax.sharding.mesh import data_size

    reps = data_size(run.mesh)
    record = {"prompt": prompt}
    texts = _generate_rows(run, params, [record] * reps, n=n, temperature=temperature,
                           top_p=1.0, max_new_tokens=max_new_tokens or cfg.rollout.max_new_tokens,
                           seed=int(np.random.SeedSequence().entropy % (2**31)))
    return texts[:n]
