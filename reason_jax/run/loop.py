"""The RL training loop: rollout -> verify -> shape -> dynamic sampling -> advantages ->
train step -> metrics -> checkpoint (../shared/DESIGN.md "One RL step, as data").

What overlaps: JAX dispatch is asynchronous, so each train step is queued on the device while
the host writes the previous step's metrics, plots and progress; Orbax writes checkpoints in
a background thread; within a step, generation is one device call and detokenising plus
verification run on the host in the verifier worker pool. Generation of step k+1 needs the
parameters of step k, so rollout and training are not overlapped (that would be off-policy).

Exact resume: per-step PRNG keys are `fold_in(seed key, step)`, the prompt iterator's state
is in the checkpoint, and the SFT cold start is part of checkpoint 0, so the steps after a
restart compute what an uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reason_jax import paths, rl
from reason_jax.data.pipeline import prompt_iterator
from reason_jax.config.loading import validate
from reason_jax.config.resolve import rl_optimizer, step_config
from reason_jax.observe.metrics import MetricsWriter
from reason_jax.observe.progress import Progress
from reason_jax.run.checkpoint import Checkpointer, MODEL_CONFIG
from reason_jax.run.compile_counter import compile_count
from reason_jax.run.policy import Policy, model_config_from_run
from reason_jax.run.rollout import collect, train_batch
from reason_jax.sharding import distributed
from reason_jax.sharding.host_arrays import rows_sharding, to_global
from reason_jax.sharding.hosts import HostSlice
from reason_jax.sharding.mesh import data_size, make_mesh
from reason_jax.run.sft import run_sft
from reason_jax.run.task import build_task
from reason_jax.verifiers import VerifierPool

log = logging.getLogger(__name__)


class _Preempted:
    """SIGTERM (TPU preemption, a scheduler) or a first Ctrl-C -> finish the step, checkpoint,
    exit 0. A second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.flag = False
        self._old: dict = {}

    def __enter__(self):
        for sig in self._SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Run:
    """Everything a run needs, built once from the config."""

    def __init__(self, cfg, workdir: str):
        distributed.initialize()
        validate(cfg, jax.device_count())
        self.cfg = cfg
        self.workdir = workdir
        self.is_main = distributed.is_main_process()
        paths.as_path(workdir).mkdir(parents=True, exist_ok=True)
        self.mesh = make_mesh(dict(cfg.mesh))
        self.task = build_task(cfg)
        self.model_cfg = model_config_from_run(cfg, self.task.tokenizer.vocab_size, workdir)
        self.policy = Policy(self.model_cfg, self.mesh)
        self.step_cfg = step = step_config(cfg)
        self.optimizer = rl_optimizer(cfg)
        self.state_shardings = rl.train_state_shardings(
            self.policy.abstract_params, self.optimizer, self.policy.train_shardings)
        self.train_step = rl.make_train_step(
            self.policy.apply_fn, self.optimizer, step,
            rl.StepShardings(self.state_shardings, rows_sharding(self.mesh, 1)))
        self.ckpt = Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save)
        self.ref_logp_fn = None
        self.ref_params = None
        if step.uses_kl:  # only then does a reference policy exist at all
            self.ref_logp_fn = rl.make_logprob_fn(
                self.policy.apply_fn, cfg.rollout.max_new_tokens,
                chunks=step.num_minibatches * step.micro_batches,
                temperature=step.temperature)

    def data_iter(self, batch_size: int, seed_offset: int = 0):
        it = prompt_iterator(self.task.train_source, batch_size=batch_size,
                             seed=self.cfg.seed + seed_offset, shuffle=self.task.shuffle,
                             shard_index=0, shard_count=1)
        return HostSlice(it)

    def new_state(self, params):
        init = jax.jit(lambda p: rl.create_train_state(p, self.optimizer),
                       out_shardings=self.state_shardings)
        return init(params)

    def abstract_state(self):
        """The TrainState as sharded ShapeDtypeStructs: the restore target on this mesh."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            jax.eval_shape(lambda: self.new_state(self.policy.abstract_params)),
            self.state_shardings)

    def initial_params(self):
        if self.cfg.model.init_from:
            return self.policy.load_params(self.cfg.model.init_from)
        return self.policy.init_params(self.cfg.seed)

    def meta(self, step, data_state, extra=None) -> dict:
        return {"step": int(step), "phase": "rl", "data": data_state,
                "seed": int(self.cfg.seed), "config": self.cfg.to_dict(), **(extra or {})}

    def write_run_files(self):
        """The resolved config (every preset value filled in) and the model's shape."""
        if not self.is_main:
            return
        paths.write_text_atomic(paths.join(self.workdir, "config.json"),
                                json.dumps(self.cfg.to_dict(), indent=2, default=str))
        paths.write_text_atomic(paths.join(self.workdir, MODEL_CONFIG),
                                json.dumps(self.model_cfg.to_dict(), indent=2))


def train(cfg, workdir: str, *, max_steps: int | None = None) -> dict[str, Any]:
    """Run (or resume) RL training. `max_steps` stops early (tests, preemption drills)."""
    t_start = time.perf_counter()  # `time_budget_s` counts from here: SFT and set-up included
    compile_count()  # start counting before anything compiles
    run = Run(cfg, workdir)
    run.write_run_files()
    data_iter = run.data_iter(cfg.rollout.batch_size)
    abstract_state = run.abstract_state()
    restored = run.ckpt.restore(abstract_state)
    metrics = MetricsWriter(workdir, enabled=run.is_main, tensorboard=cfg.log.tensorboard,
                            plot_every=cfg.log.plot_every)
    summary: dict[str, Any] = {}
    if restored is not None:
        start, state, meta = restored
        data_iter.set_state(meta["data"])
        metrics.truncate_after(start)
        log.info("resumed from step %d", start)
    else:
        params = run.initial_params()
        if cfg.sft.steps > 0 and run.task.gold_text is not None:
            sft_iter = run.data_iter(cfg.sft.batch_size, seed_offset=1)
            prog = Progress(cfg.sft.steps, "sft", enabled=run.is_main and cfg.log.progress)
            params, sft_stats = run_sft(run.task, cfg, run.policy, params, run.mesh, sft_iter,
                                        progress=prog)
            prog.close()
            summary.update(sft_stats)
        state = run.new_state(params)
        start = 0
        run.ckpt.save(0, state, run.meta(0, data_iter.get_state(), {"sft": summary}),
                      force=True)
    if run.ref_logp_fn is not None:
        # The reference is the policy RL started from (checkpoint 0: the SFT result), whether
        # this process ran the SFT or resumed later.
        run.ref_params = (jax.tree.map(jnp.copy, state.params) if start == 0 else
                          run.ckpt.restore(abstract_state, step=0)[1].params)
    end = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    base_key = jax.random.key(cfg.seed)
    progress = Progress(cfg.steps, "rl", enabled=run.is_main and cfg.log.progress)
    step = start
    skipped_in_a_row = 0
    # A run shorter than one eval period is a smoke run: `reason-jax eval` measures it.
    eval_every = cfg.eval.every if cfg.steps >= cfg.eval.every else 0
    with _Preempted() as preempt, VerifierPool(cfg.verifier.num_workers) as pool:
        if eval_every and start == 0 and end > 0:
            # Where RL starts (the SFT result): the baseline of the held-out curve.
            metrics.write(0, _held_out(run, state.params, pool))
        for step in range(start, end):
            t0 = time.perf_counter()
            rollout_params, reshard_s = run.policy.to_rollout(state.params)
            rows, stats = collect(run.task, cfg, run.step_cfg,
                                  (run.policy.graphdef, rollout_params), data_iter, pool,
                                  jax.random.fold_in(base_key, step), run.mesh)
            del rollout_params
            t1 = time.perf_counter()
            row = {"step": step + 1, **stats}
            if rows is None:
                skipped_in_a_row += 1
                row["dynamic_sampling/skipped_step"] = 1
                _check_skips(skipped_in_a_row, run.step_cfg)
            else:
                skipped_in_a_row = 0
                shards = data_size(run.mesh) // jax.process_count()
                batch = to_global(train_batch(run.step_cfg, cfg.rollout.group_size, rows,
                                              shards), run.mesh)
                if run.ref_logp_fn is not None:
                    batch["ref_logp_NT"] = run.ref_logp_fn(run.ref_params, batch)
                state, m = run.train_step(state, batch)
                row.update({k: _scalar(v) for k, v in jax.device_get(m).items()})
                row["dynamic_sampling/skipped_step"] = 0
            t2 = time.perf_counter()
            row["time/train_s"] = t2 - t1
            row["time/reshard_s"] = reshard_s
            row["time/step_s"] = t2 - t0
            row["compiles"] = compile_count()
            row["throughput/rollout_tokens_per_s"] = stats["rollout_tokens"] / max(
                stats["time/rollout_s"], 1e-9)
            done = step + 1 == end
            over_budget = bool(cfg.time_budget_s) and (
                time.perf_counter() - t_start > cfg.time_budget_s)
            # Read the signal flag once: one arriving between a "save?" and a "stop?" check
            # would otherwise stop without saving the step it finished.
            stop = preempt.flag or over_budget
            # The held-out curve ends where the policy ends, also when the budget stops it
            # (not on SIGTERM: a preempted host should checkpoint and go).
            if eval_every and ((step + 1) % eval_every == 0 or done or
                               (over_budget and not preempt.flag)):
                row.update(_held_out(run, state.params, pool))
            metrics.write(step + 1, row)
            progress.update(step + 1, reward=row["reward/mean"], acc=row["accuracy"],
                            **{"tok/s": row["throughput/rollout_tokens_per_s"]})
            summary = row
            if (step + 1) % cfg.checkpoint.every == 0 or done or stop:
                run.ckpt.save(step + 1, state, run.meta(step + 1, data_iter.get_state()),
                              force=True)
                metrics.flush()  # a bucket workdir: the rows up to the checkpoint are uploaded
            if stop:
                log.warning("stopping after step %d (%s); checkpoint saved", step + 1,
                            "time budget" if over_budget and not preempt.flag else "SIGTERM")
                break
    progress.close()
    run.ckpt.close()
    metrics.close()
    return summary


def _held_out(run, params, pool) -> dict[str, float]:
    """Held-out pass@1 / pass@k of the current policy (`eval.*`), as eval/* metrics."""
    from reason_jax.eval.run import score_policy, training_metrics

    t0 = time.perf_counter()
    rollout_params, _ = run.policy.to_rollout(params)
    out = training_metrics(score_policy(run, rollout_params, pool, greedy=False))
    out["time/eval_s"] = time.perf_counter() - t0
    return out


def _check_skips(in_a_row: int, step_cfg) -> None:
    """A step without one informative group is skipped with a warning; only a run of them
    (the task is far too hard or too easy for the policy) stops training."""
    log.warning("step skipped: dynamic sampling found no group with %s spread in %d "
                "generation batches (%d in a row)", step_cfg.filter_metric,
                step_cfg.max_gen_batches, in_a_row)
    if in_a_row >= step_cfg.max_skipped_steps:
        raise rl.DynamicSamplingError(
            f"{in_a_row} steps in a row had no group whose {step_cfg.filter_metric} varies "
            f"within max_gen_batches={step_cfg.max_gen_batches} generation batches. Raise "
            "rl.max_gen_batches or rollout.group_size, use data closer to the policy's level "
            "(a longer SFT cold start for a weak policy, harder problems for a strong one), or "
            "set rl.dynamic_sampling=False.")


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()
