"""One RL step's data: generate -> detokenize -> verify -> shape -> dynamic sampling -> batch.

Host-side work (detokenising, the verifier pool) runs per generation batch; the sampler
itself is one jitted device call. Dimensions: B prompts, G group, N = B*G, S prompt bucket,
T max_new_tokens, X = S + T.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from reason_jax import rl
from reason_jax.config.resolve import verifier_options
from reason_jax.data.bucketing import bucket_length
from reason_jax.rl import StepConfig
from reason_jax.sampling import generate
from reason_jax.sharding.host_arrays import to_global, to_local
from reason_jax.sharding.hosts import all_hosts, gather
from reason_jax.run.task import Task, decode_completions, encode_prompts


def global_prompts(task: Task, records, buckets, mesh):
    """This host's prompts -> global right-padded arrays. Every host pads to the same bucket
    (the longest prompt of the *global* batch decides it), so the shards fit together."""
    tokens_BS, lengths_B = encode_prompts(task, records)
    S = bucket_length(int(gather(np.asarray([tokens_BS.shape[1]])).max()), buckets)
    tokens_BS = np.pad(tokens_BS, ((0, 0), (0, S - tokens_BS.shape[1])),
                       constant_values=task.tokenizer.pad_id)
    return to_global((tokens_BS, lengths_B), mesh)


def generate_batch(task: Task, cfg, rollout_model, records, key, mesh):
    """Sample G completions for each record; returns host (numpy) arrays of this process."""
    ro = cfg.rollout
    g_tokens, g_lengths = global_prompts(task, records, cfg.data.buckets, mesh)
    out = generate(rollout_model, g_tokens, g_lengths, group_size=ro.group_size,
                   max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                   top_k=ro.top_k or None, top_p=ro.top_p if ro.top_p < 1 else None,
                   eos_ids=task.tokenizer.eos_ids, seed=key, pad_id=task.tokenizer.pad_id,
                   buckets=cfg.data.buckets, max_rows=ro.max_rows or None,
                   kv_cache_gb=ro.kv_cache_gb or None)
    host = to_local({"tokens": out.tokens, "logprobs": out.logprobs, "mask": out.mask,
                     "lengths": out.lengths, "truncated": out.truncated,
                     "prompt_tokens": out.prompt_tokens, "prompt_valid": out.prompt_valid})
    # Slot-steps paid (global; tail phases decode fewer than R slots): utilisation's divisor.
    host["slot_steps"] = int(out.slot_steps)
    return host


def score_batch(task: Task, cfg, step_cfg: StepConfig, pool, host, records):
    """Verifier rewards + overlong shaping for one generation batch (this host's rows)."""
    G = cfg.rollout.group_size
    r = step_cfg
    completions = decode_completions(task, host["tokens"], host["lengths"], host["truncated"])
    records_N = [rec for rec in records for _ in range(G)]
    # A verifier that times out or crashes scores like a wrong answer: under +1/-1 rewards a
    # fixed 0 would beat a wrong answer and teach the policy to hang the verifier.
    result = pool.score(task.verifier, completions, records_N, timeout_s=cfg.verifier.timeout_s,
                        correct_reward=r.reward_correct, wrong_reward=r.reward_incorrect,
                        failure_reward=r.reward_incorrect,
                        format_reward=cfg.verifier.format_reward, **verifier_options(cfg))
    rewards_N = np.asarray(result.rewards, np.float32)
    if r.overlong_shaping:
        max_len = cfg.rollout.max_new_tokens
        rewards_N = rewards_N + np.asarray(rl.overlong_penalty(
            host["lengths"], max_len=max_len, cache_len=r.overlong_window(max_len),
            factor=r.overlong_factor), np.float32)
    accuracy_N = np.asarray([info["status"] == "ok" for info in result.infos], np.float32)
    host = dict(host, rewards=rewards_N, accuracy=accuracy_N, completions=completions)
    return host, result.status_counts


def collect(task, cfg, step_cfg: StepConfig, rollout_model, data_iter, pool, step_key, mesh):
    """Generation batches until the training batch has B informative groups.

    Returns (rows, stats); rows is None when dynamic sampling found no informative group on
    any host within max_gen_batches (the loop skips the step). With some but too few, rows
    are padded with masked-out groups (`loss_rows`): the step trains on what it found instead
    of dying. Metrics in stats describe *all* generated samples of the step (an unbiased view
    of the policy), not only the kept groups; they are identical on every host.
    """
    r = step_cfg
    B_local = cfg.rollout.batch_size // jax.process_count()
    acc = rl.GroupAccumulator(B_local, cfg.rollout.group_size,
                              r.max_gen_batches if r.dynamic_sampling else 1)
    stats = {"time/rollout_s": 0.0, "time/verify_s": 0.0}
    seen: dict[str, list] = {"rewards": [], "accuracy": [], "lengths": [], "truncated": []}
    status_counts: dict[str, int] = {}
    gen_tokens = 0
    slot_steps = decoded = 0  # slot-steps paid and tokens drawn by decode steps
    i = 0
    while True:
        records = next(data_iter)
        t0 = time.perf_counter()
        host = generate_batch(task, cfg, rollout_model, records, jax.random.fold_in(step_key, i),
                              mesh)
        t1 = time.perf_counter()
        host, counts = score_batch(task, cfg, step_cfg, pool, host, records)
        t2 = time.perf_counter()
        stats["time/rollout_s"] += t1 - t0
        stats["time/verify_s"] += t2 - t1
        slot_steps += host.pop("slot_steps")
        gen_tokens += int(host["lengths"].sum())
        decoded += int(np.maximum(host["lengths"] - 1, 0).sum())  # the first token is prefill's
        for k in seen:
            seen[k].append(host[k])
        for k, v in counts.items():
            status_counts[k] = status_counts.get(k, 0) + int(v)
        i += 1
        if not r.dynamic_sampling:
            rows = dict(host, loss_rows=np.ones(len(host["lengths"]), bool))
            stats["dynamic_sampling/gen_batches"] = 1
            break
        # A full host keeps generating (and discarding) until every host is full: the
        # generation calls are collective, so all hosts make the same number of them.
        acc.add(host, host["accuracy"] if r.filter_metric == "accuracy" else host["rewards"])
        if all_hosts(acc.full) or i >= r.max_gen_batches:
            rows, loss_rows, ds = acc.take()
            rows["loss_rows"] = loss_rows
            stats.update(ds)
            stats["dynamic_sampling/groups_missing"] = int(
                gather(np.asarray([ds["dynamic_sampling/groups_missing"]])).sum())
            if int(gather(np.asarray([loss_rows.sum()])).sum()) == 0:
                rows = None
            break
    cat = {k: gather(np.concatenate(v)) for k, v in seen.items()}
    status_counts = {k: int(gather(np.asarray([v])).sum()) for k, v in
                     sorted(status_counts.items())}
    gen_tokens = int(gather(np.asarray([gen_tokens])).sum())
    # As `bench sampler` reports it: decode-drawn tokens / slot-steps (1 = no idle slot).
    stats["rollout/slot_utilisation"] = int(gather(np.asarray([decoded])).sum()) / max(
        slot_steps, 1)
    stats.update({
        "reward/mean": float(cat["rewards"].mean()),
        "reward/std": float(cat["rewards"].std()),
        "accuracy": float(cat["accuracy"].mean()),
        "response_length/mean": float(cat["lengths"].mean()),
        "response_length/max": float(cat["lengths"].max()),
        "truncated_frac": float(cat["truncated"].mean()),
        "rollout_tokens": gen_tokens,
    })
    for k, v in status_counts.items():
        stats[f"verifier/{k}"] = v
    return rows, stats


def train_batch(step_cfg: StepConfig, group_size: int, rows, data_shards: int = 1
                ) -> dict[str, np.ndarray]:
    """Host rows -> the train step's batch (`rl.row_layout`: prompt left-padded, completion).

    With `length_buckets` > 1 the rows are reordered so that each micro-batch holds rows of
    similar length (`data_shards`: this host's shards of the data axes); advantages are
    computed per group before, so the order changes nothing but what is trimmed."""
    r = step_cfg
    adv_N = np.asarray(rl.advantages(rows["rewards"], group_size, estimator=r.adv_estimator,
                                     std=r.std, eps=r.adv_eps), np.float32)
    mask_NT = rows["mask"].astype(bool)
    if r.overlong_filter:
        mask_NT = mask_NT & ~rows["truncated"][:, None].astype(bool)
    if "loss_rows" in rows:  # dynamic sampling's padding groups leave the loss
        mask_NT = mask_NT & rows["loss_rows"][:, None]
    tokens_NX, positions_NX, valid_NX = rl.row_layout(
        np.asarray(rows["prompt_tokens"]), rows["prompt_valid"], np.asarray(rows["tokens"]),
        rows["mask"])
    batch = {
        "tokens_NX": tokens_NX,
        "positions_NX": positions_NX,
        "valid_NX": valid_NX,
        "mask_NT": mask_NT.astype(np.float32),
        "adv_N": adv_N,
        # The sampler's log-probs: pi_old without recomputation, else the rollout side of the
        # mismatch metrics and correction.
        "sampler_logp_NT": rows["logprobs"].astype(np.float32),
    }
    if r.length_buckets > 1:
        order = rl.length_grouped_order(
            np.asarray(rows["lengths"]), num_minibatches=r.num_minibatches,
            micro_batches=r.micro_batches, data_shards=data_shards)
        batch = {k: v[order] for k, v in batch.items()}
    return batch
