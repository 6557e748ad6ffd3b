"""DAPO on a math prompt file with Qwen2.5-Math-1.5B on a Cloud TPU pod slice.

Prepare (once, anywhere with the HF checkpoint on disk):
    reason-jax import-hf /path/to/Qwen2.5-Math-1.5B gs://BUCKET/qwen2p5-math-1p5b
Data: a JSONL (or Parquet) file, one row per problem: {"prompt": "...", "answer": "..."},
answers checked by the `math` verifier (`Answer: ...` last line or `\\boxed{...}`).

Launch on a v5p-32 (16 chips, 4 hosts):
    python launch/tpu.py run --name rj-dapo --zone us-east5-a --accelerator v5p-32 -- \\
      reason-jax train --config configs/qwen2p5_math_dapo.py \\
        --config.model.init_from=gs://BUCKET/qwen2p5-math-1p5b \\
        --config.data.path=gs://BUCKET/dapo_math_17k.jsonl \\
        --workdir gs://BUCKET/runs/qwen2p5_math_dapo
The same command resumes after preemption (launch/tpu.py --retries does it for you).

Memory per device on a v5p-32 (16 chips of 95 GiB), planned from shapes alone with
    reason-jax bench train-step --dry-run --config configs/qwen2p5_math_dapo.py \
      --config.mesh.fsdp=16
- rollout: decode cache 15.97 GiB (R = 2,304 slots of the 8,192 samples, from
  rollout.kv_cache_gb=16; lock-step would need 56.2 GiB), weights 2.9 GiB; 19.4 GiB in all.
- train step: params + Adam 0.54 GiB; activations, as compiled by XLA:CPU (an upper bound: CPU
  buffer assignment, no TPU fusion), 800 GiB at 8 rows per device per micro-batch, 213 GiB at
  2, 116 GiB at 1 (micro_batches=32, the setting below). That is above a chip's 95 GiB: the
  term that dominates is attention over 4,352 positions materialised per layer (jnp attention)
  and the [rows, T, V] log-softmax over Qwen's 151,936-token vocabulary. To fit, measure on the
  TPU host first (the same dry run there reports XLA:TPU's numbers); if it still does not fit,
  lower rollout.max_new_tokens to 2048 or shard the sequence (mesh.tensor=2 halves heads and
  vocabulary per device).
"""

from reason_jax.config.schema import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 500
    # The shapes, for planning (`bench train-step --dry-run`) before any download; training
    # needs the weights: --config.model.init_from=<import-hf output> (it also carries the
    # tokenizer; without it the run stops with a config error, never trains random weights).
    c.model.arch = "qwen2.5-math-1.5b"
    c.model.init_from = ""
    c.model.param_dtype = "bfloat16"
    c.model.dtype = "bfloat16"
    c.model.remat = True

    c.data.task = "jsonl"
    c.data.path = "/path/to/math_prompts.jsonl"
    c.data.tokenizer = ""  # empty: the import-hf dir of model.init_from (it carries tokenizer.json)
    c.data.prompt_template = (
        "Solve the following math problem step by step. The last line of your response "
        "should be of the form Answer: $Answer.\n\n{prompt}\n\nRemember to put your answer "
        "on its own line after \"Answer:\".")
    c.data.buckets = (256, 512, 1024)

    c.rollout.batch_size = 512
    c.rollout.group_size = 16
    c.rollout.max_new_tokens = 4096
    c.rollout.temperature = 1.0
    # Continuous batching: decode slots from a 16 GiB-per-device K/V budget, not all 8,192.
    c.rollout.kv_cache_gb = 16.0

    c.verifier.name = "math"
    c.verifier.answer_format = "answer_line"  # the prompt asks for a last "Answer:" line
    c.verifier.timeout_s = 10.0
    c.verifier.num_workers = 16

    c.rl.algo = "dapo"
    c.rl.clip_low, c.rl.clip_high = 0.2, 0.28
    c.rl.agg = "token-mean"
    c.rl.beta = 0.0
    c.rl.overlong_shaping = True
    c.rl.overlong_cache_len = 1024
    c.rl.dynamic_sampling = True
    c.rl.max_gen_batches = 3
    c.rl.num_minibatches = 16
    c.rl.micro_batches = 32  # one row per device per micro-batch (see the memory note above)
    c.rl.length_buckets = 4  # long tail of lengths: micro-batches trimmed to their longest row
    c.rl.recompute_old_logp = True
    c.rl.reward_correct, c.rl.reward_incorrect = 1.0, -1.0

    c.optimizer.lr = 1e-6
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip = 1.0

    c.sft.steps = 0  # a base math model needs no cold start

    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.checkpoint.every = 10
    c.checkpoint.keep = 3

    c.eval.k = 32
    c.eval.temperature = 1.0
    c.eval.top_p = 0.7
    return c
