"""Supervised cold start: teach the policy the answer format from gold solutions.

RL needs a policy that already sometimes succeeds (../shared/NOTES-countdown.md: pass@8
near 0 never learns), so the default recipe starts with a short SFT on generated gold
answers. Same row layout as RL (prompt left-padded to a bucket, then the target, EOS and
padding), token-mean cross-entropy over target tokens.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from reason_jax.data.bucketing import bucket_length
from reason_jax.rl.optimizer import make_optimizer
from reason_jax.rl.train_step import guarded_update
from reason_jax.run.task import Task
from reason_jax.sharding.host_arrays import to_global
from reason_jax.sharding.hosts import gather


_SOFT_CACHE_ENTRIES = 50_000


def soft_targets(task: Task, record, target_ids, T: int, cache: dict) -> np.ndarray:
    """[T, V] next-token distributions: at each prefix of the drawn answer, the share of all
    correct answers that continue with each token (EOS where an answer ends). Teaches the
    whole solution set at once instead of one arbitrary member of it."""
    tok = task.tokenizer
    golds = task.all_golds(record)
    # Keyed by the answer set, not the prompt: the prompt's number order varies, the set not.
    key = tuple(golds)
    if key not in cache:
        if len(cache) >= _SOFT_CACHE_ENTRIES:  # an endless stream of problems: stay bounded
            cache.clear()
        eos = tok.eos_ids[0]
        ids = [tok.encode(g)[: T - 1] + [eos] for g in golds]
        arr = np.full((len(ids), T), -1, np.int64)
        for i, g in enumerate(ids):
            arr[i, : len(g)] = g
        cache[key] = arr
    golds_GT = cache[key]
    target = np.asarray(target_ids, np.int64)
    n = len(target)
    # Gold g is alive at position t when it agrees with the drawn answer on positions < t.
    agree_GT = golds_GT[:, :n] == target[None, :]
    alive_GT = np.concatenate([np.ones((len(golds_GT), 1), bool),
                               np.cumprod(agree_GT, axis=1)[:, :-1].astype(bool)], axis=1)
    g, t = np.nonzero(alive_GT & (golds_GT[:, :n] >= 0))
    counts_TV = np.zeros((T, tok.vocab_size), np.float32)
    np.add.at(counts_TV, (t, golds_GT[g, t]), 1.0)
    total_T = counts_TV[:n].sum(-1)
    empty = np.nonzero(total_T == 0)[0]
    counts_TV[empty, target[empty]] = 1.0
    counts_TV[:n] /= np.maximum(total_T, 1.0)[:, None]
    return counts_TV


def sft_rows(task: Task, records, rng: np.random.Generator, T: int, buckets,
             soft: bool = False, cache: dict | None = None) -> dict:
    """This host's rows. The prompt bucket S is the one of the longest prompt on *any* host,
    so every host's shard of the global batch has the same shape."""
    tok = task.tokenizer
    prompts = [tok.encode(task.prompt_text(r)) for r in records]
    targets = [tok.encode(task.gold_text(r, rng))[: T - 1] + [tok.eos_ids[0]] for r in records]
    longest = int(gather(np.asarray([max(len(p) for p in prompts)])).max())
    S = bucket_length(longest, buckets)
    N = len(records)
    tokens = np.full((N, S + T), tok.pad_id, np.int32)
    valid = np.zeros((N, S + T), bool)
    positions = np.zeros((N, S + T), np.int32)
    mask = np.zeros((N, T), np.float32)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        tokens[i, S - len(p): S] = p
        tokens[i, S: S + len(t)] = t
        valid[i, S - len(p): S + len(t)] = True
        positions[i, S - len(p): S + len(t)] = np.arange(len(p) + len(t))
        mask[i, : len(t)] = 1.0
    rows = {"tokens_NX": tokens, "positions_NX": positions, "valid_NX": valid, "mask_NT": mask}
    if soft:
        cache = {} if cache is None else cache
        rows["soft_NTV"] = np.stack([soft_targets(task, r, t, T, cache)
                                     for r, t in zip(records, targets)])
    return rows


def make_sft_step(policy, optimizer, T: int, mesh):
    def loss_fn(params, batch):
        logits_NXV = policy.apply_fn(params, batch["tokens_NX"], batch["positions_NX"],
                                     batch["valid_NX"])
        S = batch["tokens_NX"].shape[1] - T
        logits_NTV = logits_NXV[:, S - 1: S - 1 + T]
        logp_NTV = jax.nn.log_softmax(logits_NTV, -1)
        if "soft_NTV" in batch:
            nll_NT = -jnp.sum(batch["soft_NTV"] * logp_NTV, -1)
        else:
            tgt_NT = batch["tokens_NX"][:, S:]
            nll_NT = -jnp.take_along_axis(logp_NTV, tgt_NT[..., None], -1)[..., 0]
        mask = batch["mask_NT"]
        return jnp.sum(nll_NT * mask) / jnp.maximum(mask.sum(), 1.0)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        # The RL step's guard: a non-finite batch leaves params *and* Adam's moments as they
        # were (NaN moments would poison every later update).
        params, opt_state, _, finite, grad_norm = guarded_update(
            params, opt_state, jnp.zeros((), jnp.int32), grads, loss, optimizer)
        return params, opt_state, {"loss": loss, "grad_norm": grad_norm,
                                   "skipped": 1.0 - finite.astype(jnp.float32)}

    # Parameters keep the training layout; optimizer moments follow by propagation.
    return jax.jit(step, donate_argnums=(0, 1),
                   out_shardings=(policy.train_shardings, None, None))


def run_sft(task: Task, cfg, policy, params, mesh, data_iter, *, log=None, progress=None):
    """Train `cfg.sft.steps` steps (or until `sft.time_budget_s`); returns new params."""
    s = cfg.sft
    if task.gold_text is None:
        raise ValueError(f"task {task.name!r} has no gold answers for SFT; set sft.steps=0 or "
                         f"give data.answer_field")
    optimizer = make_optimizer(s.lr, s.warmup_steps, max(s.steps, 1), s.schedule,
                               s.weight_decay, 0.9, 0.99, 1.0)
    opt_state = jax.jit(optimizer.init)(params)
    step_fn = make_sft_step(policy, optimizer, cfg.rollout.max_new_tokens, mesh)
    rng = np.random.default_rng([cfg.seed, 7])
    soft = bool(s.soft_targets) and task.all_golds is not None
    cache: dict = {}
    t0 = time.perf_counter()
    last = {}
    skipped = 0
    for i in range(s.steps):
        records = []
        while len(records) < s.batch_size // jax.process_count():
            records.extend(next(data_iter))
        records = records[: s.batch_size // jax.process_count()]
        rows = sft_rows(task, records, rng, cfg.rollout.max_new_tokens, cfg.data.buckets,
                        soft=soft, cache=cache)
        batch = to_global(rows, mesh)
        params, opt_state, m = step_fn(params, opt_state, batch)
        skipped += m["skipped"]
        if progress is not None and (i % 10 == 0 or i == s.steps - 1):
            last = {k: float(v) for k, v in m.items()}
            progress.update(i + 1, loss=last["loss"])
        if s.time_budget_s and time.perf_counter() - t0 > s.time_budget_s:
            break
    jax.block_until_ready(params)
    last.pop("skipped", None)
    return params, {"sft/steps": i + 1 if s.steps else 0, "sft/time_s": time.perf_counter() - t0,
                    "sft/nonfinite_skipped": int(skipped), **{f"sft/{k}": v for k, v in last.items()}}
