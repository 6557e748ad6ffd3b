"""Building the policy for a run: model config, sharded parameters, rollout/train layouts.

Parameters never exist unsharded on one device: the init is `jax.eval_shape`d, shardings
come from the logical-axis rules, and the init is jitted with those `out_shardings`
(or read shard by shard from an import-hf checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
from flax import nnx
from jax.sharding import Mesh

from reason_jax import paths
from reason_jax.models.architectures import architecture
from reason_jax.models.config import ModelConfig
from reason_jax.models.hf_config import config_from_hf
from reason_jax.models.transformer import Transformer, logical_axes
from reason_jax.sharding.rules import ROLLOUT_RULES, TRAIN_RULES, state_shardings
from reason_jax.run.checkpoint import MODEL_CONFIG, load_model_params, read_model_config


def model_config_from_run(cfg, vocab_size: int | None, workdir: str | None = None
                          ) -> ModelConfig:
    """The model's shapes, from the first of: the workdir's own model_config.json (resume,
    eval, sample), `model.init_from` (an import-hf output, or any folder with a checkpoint's
    HF config.json), `model.arch` (a named architecture), the config's tiny model (whose vocab
    is the tokenizer's `vocab_size`). Dtypes and remat always come from the config (they may
    change on resume)."""
    m = cfg.model
    source = None
    if workdir and paths.exists(paths.join(workdir, MODEL_CONFIG)):
        source = workdir
    elif m.init_from:
        source = m.init_from
    dtypes = dict(param_dtype=m.param_dtype, dtype=m.dtype)
    if source and not paths.exists(paths.join(source, MODEL_CONFIG)) and \
            paths.exists(paths.join(source, "config.json")):
        hf = json.loads(paths.read_text(paths.join(source, "config.json")))
        return dataclasses.replace(config_from_hf(hf, **dtypes), remat=m.remat)
    if source:
        d = read_model_config(source)
        d.pop("extra", None)
        d.update(remat=m.remat, **dtypes)
        return ModelConfig.from_dict(d)
    if m.arch:
        return dataclasses.replace(architecture(m.arch, **dtypes), remat=m.remat)
    if vocab_size is None:
        raise ValueError("the built-in model's vocabulary comes from the tokenizer")
    return ModelConfig(vocab_size=vocab_size, dim=m.dim, num_layers=m.num_layers,
                       num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
                       mlp_dim=m.mlp_dim, arch="llama", norm_eps=1e-5, tie_embeddings=True,
                       max_position_embeddings=4096, param_dtype=m.param_dtype,
                       dtype=m.dtype, remat=m.remat)


def shapes_known(cfg) -> bool:
    """True when the model's shapes come from the config alone (no tokenizer needed)."""
    return bool(cfg.model.init_from or cfg.model.arch)


class Policy:
    """The graphdef, the logical axes and shardings of the parameters under both layouts."""

    def __init__(self, model_cfg: ModelConfig, mesh: Mesh):
        self.cfg = model_cfg
        self.mesh = mesh
        abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
        self.graphdef, abstract_state = nnx.split(abstract)
        # Parameters travel as plain nested dicts (`to_pure_dict`): what optax, Orbax and
        # jit see; `nnx.merge` turns them back into a module inside jitted code.
        self.abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                            abstract_state.to_pure_dict())
        self.axes = logical_axes(abstract_state).to_pure_dict()
        self.train_shardings = state_shardings(mesh, self.abstract_params, self.axes,
                                               TRAIN_RULES)
        self.rollout_shardings = state_shardings(mesh, self.abstract_params, self.axes,
                                                 ROLLOUT_RULES)

    def abstract(self, layout: str = "train"):
        sh = self.train_shardings if layout == "train" else self.rollout_shardings
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_params, sh)

    def init_params(self, seed: int):
        cfg = self.cfg

        def init():
            return nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=seed))).to_pure_dict()

        return jax.jit(init, out_shardings=self.train_shardings)()

    def load_params(self, path: str):
        return load_model_params(path, self.abstract("train"))

    def apply_fn(self, params, tokens_NX, positions_NX, valid_NX):
        return nnx.merge(self.graphdef, params)(tokens_NX, positions_NX, valid_NX)

    def to_rollout(self, params):
        """The explicit train -> rollout resharding (FSDP gathered, heads stay on `tensor`).
        Returns (params in the rollout layout, seconds it took)."""
        t0 = time.perf_counter()
        out = jax.device_put(params, self.rollout_shardings)
        jax.block_until_ready(out)
        return out, time.perf_counter() - t0

    def model(self, params) -> Transformer:
        return nnx.merge(self.graphdef, params)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))

