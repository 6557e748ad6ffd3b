"""Loading run configs: `--config FILE.py[:ARG]` plus `--config.KEY=VALUE` overrides.

Config files are ordinary Python modules with `get_config(arg=None)` (big_vision style).
The result is locked before overrides are applied, so a misspelt key is an error naming the
closest valid key, and `validate` rejects impossible settings with one clear message each.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from reason_jax import paths
from reason_jax.config.resolve import step_config
from reason_jax.config.schema import base_config



class ConfigError(ValueError):
    pass


def load_config_file(spec: str | None) -> ml_collections.ConfigDict:
    """`path.py[:arg]` -> ConfigDict. None: the built-in recipe (countdown, DAPO)."""
    if spec is None:
        from reason_jax.config.recipes import countdown

        return countdown()
    # A config is Python imported into this process: local only (also so that `:ARG` splits).
    paths.require_local(spec, "a config file is Python code imported here")
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        f"reason_jax_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg) function")
    cfg = module.get_config(arg or None) if arg else module.get_config()
    return cfg


def _parse_value(raw: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}: expected a boolean, got {raw!r}")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)  # user-typed CLI literals only, never model output
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise ConfigError(f"--config.{key}: cannot parse {raw!r} as {type(current).__name__}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, tuple) and isinstance(value, (int, float)):
        value = (value,)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(
            f"--config.{key}: expected {type(current).__name__}, got {raw!r}")
    return value


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        name = prefix + k
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_flat_keys(v, name + "."))
        else:
            out.append(name)
    return out


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply `KEY=VALUE` strings (KEY dotted, without the `config.` prefix)."""
    valid = _flat_keys(cfg)
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} must look like --config.KEY=VALUE")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        parent = cfg
        *path, leaf = key.split(".")
        for p in path:
            parent = parent[p]
        current = parent[leaf]
        field = parent._fields[leaf]  # placeholders know their type even when None
        if current is None and isinstance(field, ml_collections.FieldReference):
            ftype = field.get_type()
            current_proto = ftype() if ftype in (int, float, str, bool) else None
            value = None if raw.lower() in ("none", "null") else _parse_value(raw, current_proto,
                                                                             key)
        else:
            value = _parse_value(raw, current, key)
        parent[leaf] = value


def _check_schema(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix=""):
    """A config file may only use keys of the base schema."""
    for k, v in cfg.items():
        name = prefix + k
        if k not in schema:
            close = difflib.get_close_matches(k, list(schema.keys()), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {name!r}{hint}")
        if isinstance(v, ml_collections.ConfigDict):
            _check_schema(v, schema[k], name + ".")


def load_config(spec: str | None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load, lock, override, then resolve the algorithm preset (explicit keys win)."""
    cfg = load_config_file(spec)
    _check_schema(cfg, base_config())
    cfg.lock()
    apply_overrides(cfg, overrides)
    try:
        step_config(cfg)  # resolves the preset into cfg.rl and validates the result
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Reject settings that cannot work, one clear message each."""
    from reason_jax.sharding.mesh import resolve_sizes

    def fail(msg):
        raise ConfigError(msg)

    try:
        step_cfg = step_config(cfg)  # resolves the preset; StepConfig validates itself
    except ValueError as e:
        fail(str(e))
    r, ro = step_cfg, cfg.rollout
    if ro.group_size < 1:
        fail(f"rollout.group_size={ro.group_size} must be >= 1")
    if ro.group_size == 1 and r.adv_estimator == "passk":
        fail("rl.adv_estimator='passk' compares each sample with the rest of its group; use "
             "rollout.group_size >= 2")
    if ro.group_size == 1 and r.std != "none":
        fail("rollout.group_size=1 with rl.std normalisation: a group of one has no spread; "
             "use group_size >= 2 or rl.std='none'")
    if r.overlong_shaping and r.overlong_window(ro.max_new_tokens) >= ro.max_new_tokens:
        fail(f"rl.overlong_cache_len={r.overlong_cache_len} must be < rollout.max_new_tokens="
             f"{ro.max_new_tokens} (the soft window lies inside the maximum length)")
    if ro.max_new_tokens < 1:
        fail("rollout.max_new_tokens must be >= 1")
    if ro.temperature < 0:
        fail(f"rollout.temperature={ro.temperature} must be >= 0")
    if not 0 < ro.top_p <= 1:
        fail(f"rollout.top_p={ro.top_p} must be in (0, 1]")
    n_rows = ro.batch_size * ro.group_size
    if n_rows % r.num_minibatches:
        fail(f"rl.num_minibatches={r.num_minibatches} must divide the {n_rows} rollout rows "
             f"(rollout.batch_size * group_size)")
    mb_rows = n_rows // max(r.num_minibatches, 1)
    if mb_rows % r.micro_batches:
        fail(f"rl.micro_batches={r.micro_batches} must divide the minibatch of {mb_rows} rows")
    if cfg.steps < 0:
        fail("steps must be >= 0")
    if cfg.checkpoint.every < 1 or cfg.checkpoint.keep < 1:
        fail("checkpoint.every and checkpoint.keep must be >= 1")
    if cfg.data.task not in ("countdown", "jsonl", "parquet", "seqio"):
        fail(f"data.task={cfg.data.task!r} is not one of countdown, jsonl, parquet, seqio")
    if cfg.data.task == "countdown":
        from reason_jax.data.countdown import CountdownSpec

        try:
            CountdownSpec(**dict(cfg.data.countdown))
        except ValueError as e:
            fail(str(e))
    if cfg.data.task in ("jsonl", "parquet") and not cfg.data.path:
        fail(f"data.task={cfg.data.task!r} needs data.path")
    if cfg.verifier.answer_format:
        from reason_jax.verifiers.answer_formats import FORMATS

        bad = [f for f in cfg.verifier.answer_format.split(",") if f.strip() not in FORMATS]
        if bad:
            fail(f"verifier.answer_format: {bad} not in {list(FORMATS)}")
    if cfg.data.task != "countdown" and not (cfg.data.tokenizer or cfg.model.init_from):
        fail(f"data.task={cfg.data.task!r} needs a tokenizer: set data.tokenizer (a "
             "tokenizer.json or .model file) or model.init_from (an import-hf folder carries "
             "its tokenizer)")
    if num_devices is not None:
        try:
            sizes = resolve_sizes(dict(cfg.mesh), num_devices)
        except ValueError as e:
            fail(f"mesh: {e}")
        data = sizes["dcn_data"] * sizes["data"] * sizes["fsdp"]
        if ro.batch_size % data:
            fail(f"rollout.batch_size={ro.batch_size} is not divisible by the mesh's data size "
                 f"{data} (dcn_data*data*fsdp)")
        if (mb_rows // r.micro_batches) % data:
            fail(f"a micro-batch of {mb_rows // r.micro_batches} rows is not divisible by the "
                 f"mesh's data size {data}")
        if cfg.sft.steps and cfg.sft.batch_size % data:
            fail(f"sft.batch_size={cfg.sft.batch_size} is not divisible by the mesh's data size "
                 f"{data}")

