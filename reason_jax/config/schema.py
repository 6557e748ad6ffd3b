"""The schema of every run config, with the built-in recipe's values as defaults.

Every key a config may set exists here; experiment files (`configs/*.py`) start from
`base_config()` and change values, so a misspelt key is always an error (the config is
locked before overrides are applied). The defaults are the CPU smoke recipe: SFT cold start
then DAPO on countdown with the tiny built-in Llama.
"""

from __future__ import annotations

import ml_collections


# The `rl` keys: every field of reason_jax.rl.StepConfig except the sampling temperature, which
# is `rollout.temperature`. Typed here so that `--config.rl.KEY=VALUE` parses.
_RL_KEYS = {
    "ppo_epochs": int, "num_minibatches": int, "micro_batches": int, "length_buckets": int,
    "clip_low": float, "clip_high": float, "dual_clip": float, "agg": str, "level": str,
    "loss": str, "clip_cov_ratio": float, "clip_cov_lb": float, "clip_cov_ub": float,
    "kl_cov_ratio": float, "kl_cov_coef": float,
    "beta": float, "kl_kind": str, "entropy_coef": float,
    "recompute_old_logp": bool, "rollout_correction": str, "rollout_correction_cap": float,
    "adv_estimator": str, "std": str, "adv_eps": float,
    "reward_correct": float, "reward_incorrect": float,
    "overlong_shaping": bool, "overlong_cache_len": int, "overlong_factor": float,
    "overlong_filter": bool, "dynamic_sampling": bool, "filter_metric": str,
    "max_gen_batches": int, "max_skipped_steps": int,
}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 400  # RL steps
    # Stop RL (after a checkpoint and a last held-out eval) once this much wall time has
    # passed since `train` started, SFT included; 0 = off. Off here: a pod recipe runs its
    # steps; the built-in CPU recipe sets 570 s (recipes.countdown).
    c.time_budget_s = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.init_from = ""  # an `import-hf` output dir; empty: the built-in tiny model
    # A named architecture (reason_jax.models.architectures): its shapes, random weights.
    # For planning a pod (bench train-step --dry-run) before any checkpoint is downloaded.
    c.model.arch = ""
    c.model.dim = 128
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.mlp_dim = 384
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    c.model.remat = False

    c.data = ml_collections.ConfigDict()
    c.data.task = "countdown"  # countdown | jsonl | parquet | seqio
    c.data.path = ""
    c.data.eval_path = ""
    c.data.prompt_field = "prompt"
    c.data.answer_field = "answer"
    c.data.prompt_template = "{prompt}"
    c.data.skip_bad_rows = False
    c.data.seqio_task = ""
    c.data.tokenizer = ""  # empty: the task's own (countdown ships a SentencePiece model)
    c.data.buckets = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    c.data.shuffle = True
    # The built-in task's size (reason_jax.data.countdown.CountdownSpec): four numbers 1-9
    # give ~28,500 distinct problems, too many to memorise in a CPU run, so RL gains carry
    # to held-out problems; numbers=3 is the classic 2,072-problem task.
    c.data.countdown = ml_collections.ConfigDict()
    c.data.countdown.numbers = 4
    c.data.countdown.max_number = 9
    c.data.countdown.max_target = 999

    c.rollout = ml_collections.ConfigDict()
    c.rollout.batch_size = 32  # prompts per generation batch (B)
    c.rollout.group_size = 8  # G
    c.rollout.max_new_tokens = 16
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0  # 0: off
    c.rollout.top_p = 1.0
    # Decode slots R (continuous batching): 0 = one per sample (N = B*G, lock-step); or the
    # most that fit a per-device K/V budget in GiB (kv_cache_gb > 0); with both, the smaller.
    c.rollout.max_rows = 0
    c.rollout.kv_cache_gb = 0.0

    c.verifier = ml_collections.ConfigDict()
    c.verifier.name = "countdown"
    c.verifier.timeout_s = 5.0
    c.verifier.num_workers = 2
    c.verifier.format_reward = 0.0
    # math: demand an answer format (boxed | answer_tag | answer_line | gsm8k, or a comma
    # list); empty: math-verify's own extraction (last \boxed, then the last LaTeX/expression).
    c.verifier.answer_format = ""

    # `rl.algo` picks a preset (a reason_jax.rl.StepConfig); every other `rl` key is None
    # ("the preset's value") unless a config or an override sets it, and then it wins. The
    # resolved values are written to WORKDIR/config.json (reason_jax.config.resolve).
    c.rl = ml_collections.ConfigDict()
    c.rl.algo = "dapo"  # grpo | dapo | drgrpo | gspo | cispo
    for name, kind in _RL_KEYS.items():
        c.rl[name] = ml_collections.config_dict.placeholder(kind)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.schedule = "constant"  # constant | cosine
    c.optimizer.weight_decay = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.99
    c.optimizer.grad_clip = 1.0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 2000  # cold start before RL when the workdir has no checkpoint; 0: skip
    c.sft.batch_size = 128
    c.sft.lr = 1e-3
    c.sft.warmup_steps = 100
    c.sft.schedule = "cosine"
    c.sft.weight_decay = 0.0
    c.sft.time_budget_s = 0.0  # 0: run all steps
    c.sft.soft_targets = True  # when the task can enumerate all correct answers

    c.mesh = ml_collections.ConfigDict()
    c.mesh.dcn_data = 1
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 20
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.eval = ml_collections.ConfigDict()
    # Held-out pass@1 / pass@k every this many RL steps (and before the first, and after the
    # last), logged with the training metrics; 0, or a run of fewer steps: only `reason-jax
    # eval`.
    c.eval.every = 0
    c.eval.num_problems = 256
    c.eval.k = 8
    c.eval.temperature = 1.0
    c.eval.top_p = 1.0
    c.eval.batch_size = 64

    c.log = ml_collections.ConfigDict()
    c.log.plot_every = 10
    c.log.tensorboard = True
    c.log.progress = True
    return c
