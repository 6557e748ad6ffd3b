"""`reason-jax sft`: the supervised cold start on its own.

It writes checkpoint 0 (SFT weights, fresh optimizer), exactly what `reason-jax train` would
have produced before its first RL step, so a later `train` on the same workdir continues
with RL.
"""

from __future__ import annotations

import jax

from reason_jax.run.loop import Run
from reason_jax.observe.progress import Progress
from reason_jax.run.sft import run_sft


def sft_only(cfg, workdir: str) -> dict:
    run = Run(cfg, workdir)
    run.write_run_files()
    if run.ckpt.latest_step() is not None:
        raise SystemExit(f"{workdir} already has checkpoints; SFT is the cold start of a new run")
    if cfg.sft.steps <= 0:
        raise SystemExit("sft.steps is 0: nothing to do")
    params = run.initial_params()
    data_iter = run.data_iter(cfg.rollout.batch_size)
    sft_iter = run.data_iter(cfg.sft.batch_size, seed_offset=1)
    prog = Progress(cfg.sft.steps, "sft", enabled=run.is_main and cfg.log.progress)
    params, stats = run_sft(run.task, cfg, run.policy, params, run.mesh, sft_iter, progress=prog)
    prog.close()
    state = run.new_state(params)
    run.ckpt.save(0, state, run.meta(0, data_iter.get_state(), {"sft": stats}), force=True)
    run.ckpt.close()
    jax.block_until_ready(state)
    return stats
