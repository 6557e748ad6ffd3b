"""`reason-jax bench rl-step`: full RL steps of the training loop (`train.loop.train`) on the
config's task, split into rollout / verify / reshard / train time per step.

It runs the real loop in a temporary work directory (or `--workdir`, which must be fresh:
an existing checkpoint there would be resumed) with, unless the overrides say otherwise,
no SFT cold start, no dynamic sampling (one generation batch per step, so every step does the
same work), `--iters` + 1 steps (the first includes compilation and is reported apart), no
TensorBoard, no progress bar and no intermediate checkpoints. Times come from the loop's own
`metrics.jsonl` (`time/rollout_s`, `time/verify_s`, `time/reshard_s`, `time/train_s`,
`time/step_s`).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np

from reason_jax import paths
from reason_jax.bench import common

KEYS = ("time/rollout_s", "time/verify_s", "time/reshard_s", "time/train_s", "time/step_s")


def run(args, overrides) -> dict:
    iters = max(int(getattr(args, "iters", 3) or 1), 1)
    defaults = ["sft.steps=0", "rl.dynamic_sampling=False", f"steps={iters + 1}",
                "log.tensorboard=False", "log.progress=False", "log.plot_every=1000000",
                "checkpoint.every=1000000"]
    cfg = common.load(args, defaults + list(overrides))
    from reason_jax.config.loading import ConfigError
    from reason_jax.run.loop import train
    from reason_jax.observe.metrics import read_metrics

    workdir = getattr(args, "workdir", None)
    tmp = None
    if workdir is not None and paths.exists(workdir) and any(paths.as_path(workdir).iterdir()):
        raise SystemExit(f"rl-step bench: --workdir {workdir} is not empty (the loop would "
                         f"resume from it); give a new directory or none")
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="rj-bench-rl-")
        workdir = tmp
    try:
        t0 = time.perf_counter()
        try:
            train(cfg, workdir)
        except ConfigError as e:
            raise SystemExit(f"config error: {e}")
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(workdir) if "time/step_s" in r]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not rows:
        raise SystemExit("rl-step bench: the loop wrote no step metrics")

    def split(row):
        out = {k.split("/")[1][:-2] + "_s": float(row.get(k) or 0.0) for k in KEYS}
        out["other_s"] = max(out["step_s"] - out["rollout_s"] - out["verify_s"]
                             - out["reshard_s"] - out["train_s"], 0.0)
        out["rollout_tokens"] = int(row.get("rollout_tokens", 0))
        return out

    per_step = [split(r) for r in rows]
    steady = per_step[1:] or per_step
    mean = {k: float(np.mean([s[k] for s in steady])) for k in steady[0]}
    ro = cfg.rollout
    step_s = mean["step_s"]
    return {
        "bench": "rl-step",
        **common.device_info(),
        "task": cfg.data.task,
        "model": {k: cfg.model[k] for k in ("dim", "num_layers", "num_heads", "num_kv_heads",
                                             "head_dim", "mlp_dim", "param_dtype", "dtype")},
        "B": int(ro.batch_size), "G": int(ro.group_size), "N": int(ro.batch_size * ro.group_size),
        "T": int(ro.max_new_tokens),
        "steps": len(per_step),
        "steady_steps": len(steady),
        "first_step": per_step[0],
        "steady_mean": mean,
        "step_s": step_s,
        "rollout_s": mean["rollout_s"],
        "verify_s": mean["verify_s"],
        "train_s": mean["train_s"],
        "reshard_s": mean["reshard_s"],
        "fractions": {k[:-2]: mean[k] / step_s for k in ("rollout_s", "verify_s", "reshard_s",
                                                          "train_s", "other_s")},
        "rollout_tokens_per_s": mean["rollout_tokens"] / max(mean["rollout_s"], 1e-9),
        "per_step": per_step,
        "wall_s": wall,
        "final_reward_mean": rows[-1].get("reward/mean"),
    }
