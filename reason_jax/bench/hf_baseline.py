"""The Hugging Face baseline of the sampler bench: the same weights (exported with
`export_hf`, loaded with `AutoModelForCausalLM.from_pretrained`), the same prompts, G samples
per prompt via `num_return_sequences`, exactly T new tokens (`min_new_tokens = max_new_tokens`,
no EOS), pure sampling (top_k=0, top_p=1), on CPU with the faster of torch threads = available
cores and 1 thread (tried on a short run first: on a loaded machine, OpenMP's spinning threads
can make 2 threads several times slower than 1).

It runs in its **own process** (`python -m reason_jax.bench.hf_baseline`, which never imports
JAX): timed inside the bench's process, torch shared the cores with the XLA:CPU thread pool
of the process that had just run the sampler, and the two disagreed with a separate
measurement by up to several-fold. The parent waits idle while the child runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

log = logging.getLogger(__name__)


def available() -> str | None:
    """None if torch + transformers import, else the reason they do not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception as e:  # pragma: no cover (depends on the install)
        return f"{type(e).__name__}: {e}"
    return None


def measure(params, model_cfg, tokens_BS: np.ndarray, *, G: int, T: int, temperature: float,
            pad_id: int, seed: int, timed_runs: int = 3, budget_s: float = 30.0,
            timeout_s: float = 1800.0) -> dict:
    """Export `params`, then time transformers' `generate` on `tokens_BS` in a child process.
    Returns the child's JSON (`hf_tokens_per_s`, ...) or `{"skipped"/"error": reason}`."""
    why = available()
    if why is not None:
        return {"skipped": f"torch/transformers not importable ({why})"}
    from reason_jax.bench import common
    from reason_jax.models import export_hf

    with tempfile.TemporaryDirectory(prefix="rj-bench-hf-") as tmp:
        export_hf(params, model_cfg, tmp, dtype="float32")
        np.save(os.path.join(tmp, "prompts.npy"), np.asarray(tokens_BS, np.int64))
        cmd = [sys.executable, "-m", "reason_jax.bench.hf_baseline", tmp, "--G", str(G),
               "--T", str(T), "--temperature", str(temperature), "--pad-id", str(pad_id),
               "--seed", str(seed), "--timed-runs", str(timed_runs), "--budget-s",
               str(budget_s), "--threads", str(common.cpu_cores())]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"transformers baseline took more than {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"transformers baseline exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_generate(model_dir: str, tokens_BS: np.ndarray, *, G: int, T: int,
                  temperature: float, pad_id: int, seed: int, threads: int,
                  timed_runs: int = 3, budget_s: float = 30.0) -> dict:
    """In this process: load the exported model, pick the faster thread count (`threads` or
    1) on a short run, and time `generate` up to `timed_runs` times, no new run once
    `budget_s` has been spent (median)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = torch.as_tensor(np.asarray(tokens_BS), dtype=torch.long)
    mask = torch.ones_like(ids)
    S = ids.shape[1]

    def run(new_tokens):
        with torch.inference_mode():
            return model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True,
                temperature=max(temperature, 1e-5), top_k=0, top_p=1.0,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                num_return_sequences=G, pad_token_id=pad_id, eos_token_id=None)

    trials = {}
    for n in sorted({max(int(threads), 1), 1}, reverse=True):
        torch.set_num_threads(n)
        run(min(2, T))  # warm-up (kernels, caches)
        t0 = time.perf_counter()
        run(min(8, T))
        trials[n] = time.perf_counter() - t0
    threads = min(trials, key=trials.get)
    torch.set_num_threads(threads)
    times: list[float] = []
    out = None
    while len(times) < max(timed_runs, 1) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        out = run(T)
        times.append(time.perf_counter() - t0)
    gen_s = float(np.median(times))
    new, rows = int(out.shape[1] - S), int(out.shape[0])
    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": threads,
        "thread_trials_s": {str(k): v for k, v in trials.items()},
        "device": "cpu",
        "process": "separate",
        "rows": rows,
        "new_tokens_per_row": new,
        "generate_s": gen_s,
        "generate_times_s": times,
        "hf_tokens_per_s": rows * new / gen_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="export_hf output; prompts in MODEL_DIR/prompts.npy")
    p.add_argument("--G", type=int, required=True)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--pad-id", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timed-runs", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    tokens = np.load(os.path.join(a.model_dir, "prompts.npy"))
    print(json.dumps(time_generate(a.model_dir, tokens, G=a.G, T=a.T,
                                   temperature=a.temperature, pad_id=a.pad_id, seed=a.seed,
                                   threads=a.threads, timed_runs=a.timed_runs,
                                   budget_s=a.budget_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
