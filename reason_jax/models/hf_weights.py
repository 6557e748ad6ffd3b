"""Hugging Face checkpoint import (`from_hf`) and export (`export_hf`).

Tensors are read lazily from memory-mapped safetensors. With a mesh, each device's shard is
read and placed by `jax.make_array_from_callback`, so a model larger than one device never
exists whole on one device (nor whole in host memory).

Layouts (HF stores Linear weights as [out, in]):
  q/k/v  HF [X*H, D]   -> ours [D, X, H]      ("in_heads")
  o      HF [D, Q*H]   -> ours [Q, H, D]      ("out_heads")
  biases HF [X*H]      -> ours [X, H]         ("bias_heads")
  mlp    HF [out, in]  -> ours [in, out]      ("transpose")
  embed, norms         -> unchanged           ("copy")
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from reason_jax import paths
from reason_jax.models.config import ModelConfig, as_dtype
from reason_jax.models.hf_config import config_from_hf, config_to_hf
from reason_jax.models.safetensors_io import index_checkpoint, write_file
from reason_jax.models.transformer import Transformer, logical_axes

Path = tuple[Any, ...]
# Tensors HF may store that carry no parameters of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def tensor_map(cfg: ModelConfig) -> dict[Path, tuple[str, str]]:
    """Our state path -> (HF tensor name, layout kind)."""
    m: dict[Path, tuple[str, str]] = {("embed_VD",): ("model.embed_tokens.weight", "copy"),
                                      ("final_norm_D",): ("model.norm.weight", "copy")}
    if not cfg.tie_embeddings:
        m[("lm_head_DV",)] = ("lm_head.weight", "transpose")
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("layers", i)
        m[ours + ("attn_norm_D",)] = (hf + "input_layernorm.weight", "copy")
        m[ours + ("mlp_norm_D",)] = (hf + "post_attention_layernorm.weight", "copy")
        for x in ("q", "k", "v"):
            suffix = "_DQH" if x == "q" else "_DKH"
            m[ours + ("attn", x + suffix)] = (hf + f"self_attn.{x}_proj.weight", "in_heads")
            if cfg.qkv_bias:
                bsuffix = "_bias_QH" if x == "q" else "_bias_KH"
                m[ours + ("attn", x + bsuffix)] = (hf + f"self_attn.{x}_proj.bias", "bias_heads")
        m[ours + ("attn", "o_QHD")] = (hf + "self_attn.o_proj.weight", "out_heads")
        if cfg.o_bias:
            m[ours + ("attn", "o_bias_D")] = (hf + "self_attn.o_proj.bias", "copy")
        if cfg.qk_norm:
            m[ours + ("attn", "q_norm_H")] = (hf + "self_attn.q_norm.weight", "copy")
            m[ours + ("attn", "k_norm_H")] = (hf + "self_attn.k_norm.weight", "copy")
        for name, ours_name in (("gate", "gate_DF"), ("up", "up_DF"), ("down", "down_FD")):
            m[ours + ("mlp", ours_name)] = (hf + f"mlp.{name}_proj.weight", "transpose")
    return m


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "copy":
        return shape
    if kind == "transpose":
        return shape[::-1]
    if kind == "in_heads":  # ours [D, X, H]
        return (shape[1] * shape[2], shape[0])
    if kind == "out_heads":  # ours [Q, H, D]
        return (shape[2], shape[0] * shape[1])
    if kind == "bias_heads":
        return (shape[0] * shape[1],)
    raise ValueError(kind)


def _read_slice(hf_arr: np.ndarray, kind: str, shape, index: tuple[slice, ...]) -> np.ndarray:
    """Read only the part of the HF tensor behind `ours[index]`."""
    idx = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
    if kind == "copy":
        return np.asarray(hf_arr[idx])
    if kind == "transpose":
        return np.asarray(hf_arr[idx[::-1]]).T
    if kind == "in_heads":
        sd, sx, sh = idx
        H = shape[2]
        rows = np.asarray(hf_arr[sx.start * H: sx.stop * H, sd])  # [x*H, d]
        return rows.reshape(sx.stop - sx.start, H, -1)[:, sh, :].transpose(2, 0, 1)
    if kind == "out_heads":
        sq, sh, sd = idx
        H = shape[1]
        cols = np.asarray(hf_arr[sd, sq.start * H: sq.stop * H])  # [d, q*H]
        return cols.reshape(-1, sq.stop - sq.start, H)[:, :, sh].transpose(1, 2, 0)
    if kind == "bias_heads":
        sx, sh = idx
        H = shape[1]
        return np.asarray(hf_arr[sx.start * H: sx.stop * H]).reshape(-1, H)[:, sh]
    raise ValueError(kind)


def _to_ours(arr: np.ndarray, kind: str, shape) -> np.ndarray:
    return _read_slice(arr, kind, shape, tuple(slice(None) for _ in shape))


def _to_hf(arr: np.ndarray, kind: str) -> np.ndarray:
    if kind == "copy":
        return arr
    if kind == "transpose":
        return arr.T
    if kind == "in_heads":
        D, X, H = arr.shape
        return arr.transpose(1, 2, 0).reshape(X * H, D)
    if kind == "out_heads":
        Q, H, D = arr.shape
        return arr.transpose(2, 0, 1).reshape(D, Q * H)
    if kind == "bias_heads":
        return arr.reshape(-1)
    raise ValueError(kind)


def _set_path(tree: dict, path: Path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _abstract_model(cfg: ModelConfig):
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def read_hf_config(path: str) -> dict[str, Any]:
    cfg_path = paths.as_path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} has no config.json")
    return json.loads(cfg_path.read_text())


def load_state_from_hf(path: str, cfg: ModelConfig,
                       sharding_fn: Callable[[Path, tuple[str, ...], tuple[int, ...]], Any] | None = None):
    """Return (graphdef, state) with parameters read from `path`.

    `sharding_fn(path, logical_axes, shape)` gives the target sharding per parameter (or None for
    the default device); each device then reads only its own shard.
    """
    entries = index_checkpoint(path)
    graphdef, abstract_state = _abstract_model(cfg)
    axes = logical_axes(abstract_state).to_pure_dict()
    shapes = abstract_state.to_pure_dict()
    mapping = tensor_map(cfg)
    expected = {hf for hf, _ in mapping.values()}
    ignored = set()
    if cfg.tie_embeddings:
        # Some tied checkpoints store the (identical) head anyway; transformers ignores it.
        ignored.add("lm_head.weight")
    unexpected = sorted(n for n in entries if n not in expected and n not in ignored
                        and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(
            f"checkpoint tensor {unexpected[0]!r} is not used by a {cfg.arch} model with this "
            f"config ({len(unexpected)} unexpected tensors); wrong architecture or config?")
    pd = as_dtype(cfg.param_dtype)
    pure: dict = {}
    for our_path, (hf_name, kind) in mapping.items():
        leaf = shapes
        ax = axes
        for key in our_path:
            leaf, ax = leaf[key], ax[key]
        shape = tuple(leaf.shape)
        if hf_name not in entries:
            raise ValueError(f"checkpoint is missing tensor {hf_name!r} (needed for {our_path})")
        entry = entries[hf_name]
        want = _hf_shape(kind, shape)
        if entry.shape != want:
            raise ValueError(f"tensor {hf_name!r} has shape {list(entry.shape)}, expected "
                             f"{list(want)} from config.json")
        hf_arr = entry.array()
        sharding = sharding_fn(our_path, ax, shape) if sharding_fn else None
        if sharding is None:
            value = jnp.asarray(_to_ours(hf_arr, kind, shape).astype(pd))
        else:
            value = jax.make_array_from_callback(
                shape, sharding,
                lambda index, a=hf_arr, k=kind, s=shape: _read_slice(a, k, s, index).astype(pd))
        _set_path(pure, our_path, value)
    abstract_state.replace_by_pure_dict(pure)
    return graphdef, abstract_state


def from_hf(path: str, dtype: Any = jnp.float32, *, param_dtype: Any = None,
            mesh: jax.sharding.Mesh | None = None, rules: Any = None) -> Transformer:
    """Load a Llama / Qwen2 / Qwen3 HF checkpoint folder as a `Transformer`.

    `path` is a local folder: its safetensors are memory-mapped (a gs:// folder is refused
    with a message saying how to copy it).

    `dtype` is the compute dtype (parameters default to the same). With `mesh`, parameters
    are placed directly with the shardings given by the logical-axis `rules`.
    """
    dt = jnp.dtype(dtype).name
    pdt = jnp.dtype(param_dtype).name if param_dtype is not None else dt
    cfg = config_from_hf(read_hf_config(path), param_dtype=pdt, dtype=dt)
    sharding_fn = None
    if mesh is not None:
        from reason_jax.sharding.rules import named_sharding
        sharding_fn = lambda _, ax, shape: named_sharding(mesh, ax, rules, shape)  # noqa: E731
    graphdef, state = load_state_from_hf(path, cfg, sharding_fn)
    return nnx.merge(graphdef, state)


def export_hf(state_pure: dict, cfg: ModelConfig, out_dir: str, *, dtype: str = "float32",
              max_shard_bytes: int = 4 << 30, generation: dict[str, Any] | None = None) -> None:
    """Write HF-format `config.json` + safetensors (sharded with an index when large) into
    `out_dir`, local or gs://."""
    out = paths.as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
                "float16": np.float16}[dtype]
    tensors: list[tuple[str, np.ndarray]] = []
    for our_path, (hf_name, kind) in tensor_map(cfg).items():
        leaf = state_pure
        for key in our_path:
            leaf = leaf[key]
        arr = np.asarray(jax.device_get(leaf)).astype(np.float32)
        tensors.append((hf_name, np.ascontiguousarray(_to_hf(arr, kind)).astype(np_dtype)))
    shards: list[list[tuple[str, np.ndarray]]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t[1].nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t[1].nbytes
    if len(shards) == 1:
        write_file(out / "model.safetensors", shards[0], {"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_file(out / name, shard, {"format": "pt"})
            weight_map.update({n: name for n, _ in shard})
        total = sum(a.nbytes for _, a in tensors)
        paths.write_text_atomic(out / "model.safetensors.index.json", json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    gen = generation or {}
    hf_cfg = config_to_hf(cfg, torch_dtype=dtype, eos_token_id=gen.get("eos_token_id"),
                          bos_token_id=gen.get("bos_token_id"))
    # config.json last: a folder with a config.json is a complete export.
    if gen:
        paths.write_text_atomic(out / "generation_config.json", json.dumps(gen, indent=2))
    paths.write_text_atomic(out / "config.json", json.dumps(hf_cfg, indent=2))
