"""The Hugging Face baseline of the sampler bench: the same weights (exported with
`export_hf`, loaded with `AutoModelForCausalLM.from_pretrained`), the same prompts, G samples
per prompt via `num_return_sequences`, exactly T new tokens (`min_new_tokens = max_new_tokens`,
no EOS), pure sampling (top_k=0, top_p=1), on CPU with torch threads = available cores.
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np

from reason_jax.bench import common

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
            pad_id: int, seed: int, timed_runs: int = 3, budget_s: float = 30.0) -> dict:
    why = available()
    if why is not None:
        return {"skipped": f"torch/transformers not importable ({why})"}
    import torch
    import transformers

    from reason_jax.models import export_hf

    threads = common.cpu_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="rj-bench-hf-") as tmp:
        export_hf(params, model_cfg, tmp, dtype="float32")
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    model.eval()
    ids = torch.as_tensor(np.asarray(tokens_BS), dtype=torch.long)
    mask = torch.ones_like(ids)
    B, S = ids.shape

    def run(new_tokens):
        with torch.inference_mode():
            return model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True,
                temperature=max(temperature, 1e-5), top_k=0, top_p=1.0,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                num_return_sequences=G, pad_token_id=pad_id, eos_token_id=None)

    run(min(2, T))  # warm-up (kernels, caches)
    times = []
    out = None
    # Up to `timed_runs` runs (median), but no new run once `budget_s` has been spent: one
    # run of a large config can take minutes on CPU.
    while len(times) < max(timed_runs, 1) and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        out = run(T)
        times.append(time.perf_counter() - t0)
    gen_s = float(np.median(times))
    new = int(out.shape[1] - S)
    rows = int(out.shape[0])
    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": threads,
        "device": "cpu",
        "rows": rows,
        "new_tokens_per_row": new,
        "generate_s": gen_s,
        "generate_times_s": times,
        "hf_tokens_per_s": rows * new / gen_s,
    }
