"""`import-hf` and `export-hf`: moving weights between HF folders and reason-jax checkpoints.

import-hf reads a local HF folder (safetensors are memory-mapped) and writes anywhere (local or
gs://); export-hf reads a workdir or import-hf output anywhere and writes anywhere.
"""

from __future__ import annotations

import time

import jax

from reason_jax import paths
from reason_jax.models.config import ModelConfig
from reason_jax.models.hf_config import config_from_hf
from reason_jax.models.hf_weights import export_hf, load_state_from_hf, read_hf_config
from reason_jax.run.checkpoint import load_model_params, read_model_config, save_model


def import_hf(src: str, out: str, *, dtype: str = "float32") -> dict:
    """Write `out/params` (Orbax) + `out/model_config.json`; copy tokenizer files along."""
    t0 = time.perf_counter()
    paths.require_local(src, "import-hf memory-maps the HF safetensors of SRC")
    cfg = config_from_hf(read_hf_config(src), param_dtype=dtype, dtype=dtype)
    _, state = load_state_from_hf(src, cfg)
    params = state.to_pure_dict()
    save_model(out, params, cfg.to_dict())
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                 "generation_config.json", "special_tokens_map.json"):
        p = paths.as_path(src) / name
        if p.exists() and jax.process_index() == 0:
            paths.write_bytes_atomic(paths.as_path(out) / name, p.read_bytes())
    return {"out": out, "arch": cfg.arch, "params": cfg.num_params(),
            "seconds": round(time.perf_counter() - t0, 3)}


def export_hf_cmd(src: str, out: str, *, dtype: str = "float32") -> dict:
    """`src` is a workdir (its latest restorable checkpoint) or an import-hf output."""
    from flax import nnx

    from reason_jax.models.transformer import Transformer

    d = read_model_config(src)
    d.pop("extra", None)
    cfg = ModelConfig.from_dict(d)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    abstract_params = nnx.state(abstract).to_pure_dict()
    abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                   abstract_params)
    params = load_model_params(src, abstract_params)
    gen = {}
    eos = _eos_ids(src)
    if eos:
        gen["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    export_hf(params, cfg, out, dtype=dtype, generation=gen or None)
    return {"out": out, "arch": cfg.arch, "dtype": dtype}


def _eos_ids(src: str):
    try:
        from reason_jax.models.tokenizer import load_tokenizer

        return list(load_tokenizer(src).eos_ids)
    except Exception:  # noqa: BLE001 - no tokenizer files: the config simply has no eos
        return []
