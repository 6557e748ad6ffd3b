"""Decoder-only transformer covering Llama 3, Qwen2/Qwen2.5 and Qwen3.

Dimension legend (../shared/DESIGN.md):
  B batch of prompts · G samples per prompt · N = B*G rows · S prompt (prefix) length ·
  T tokens in this call · C decode-cache slots · D model width · F MLP hidden ·
  Q query heads · K key/value heads · R = Q/K query heads per KV head · H head dim ·
  V vocab · L layers.

Every parameter carries `logical_axes` metadata (names from `reason_jax.sharding.rules`), so
sharding is decided by a rules table, never inside the model. The module is an NNX module;
jitted code takes plain state via `nnx.split` / `nnx.merge`.

Three ways to call it (one code path for the maths):
  * `model(tokens_BT, positions_BT, valid_BT=...)` -> logits `[B, T, V]` (training, scoring);
  * `model.prefill(...)` -> last-token logits plus per-layer K/V to seed a `KVCache`;
  * `model.decode(tokens_NT, positions_NT, cache)` -> logits and the cache written in place.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reason_jax.models.config import ModelConfig, as_dtype
from reason_jax.models.kv_cache import KVCache
from reason_jax.models.rope import apply_rope, inverse_frequencies

# Large-negative, not -inf: a fully masked row (a left-pad query) must give finite values,
# so no NaN reaches a gradient.
_MASK_VALUE = -1e30


def _param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal", std: float = 0.02):
    if init == "normal":
        value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    assert len(axes) == len(shape), (shape, axes)
    return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


def rms_norm(x, scale, eps):
    """HF semantics: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * x32.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, Q, K, H = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = as_dtype(cfg.param_dtype)
        self.cfg = cfg
        self.q_DQH = _param(rngs, (D, Q, H), ("embed", "heads", "head_dim"), pd)
        self.k_DKH = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.v_DKH = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), pd)
        self.o_QHD = _param(rngs, (Q, H, D), ("heads", "head_dim", "embed"), pd)
        if cfg.qkv_bias:
            self.q_bias_QH = _param(rngs, (Q, H), ("heads", "head_dim"), pd, "zeros")
            self.k_bias_KH = _param(rngs, (K, H), ("kv_heads", "head_dim"), pd, "zeros")
            self.v_bias_KH = _param(rngs, (K, H), ("kv_heads", "head_dim"), pd, "zeros")
        if cfg.o_bias:
            self.o_bias_D = _param(rngs, (D,), ("embed",), pd, "zeros")
        if cfg.qk_norm:
            self.q_norm_H = _param(rngs, (H,), ("head_dim",), pd, "ones")
            self.k_norm_H = _param(rngs, (H,), ("head_dim",), pd, "ones")

    def project(self, x_BTD, positions_BT):
        """Queries, keys and values with bias, q/k norm and rotary embedding applied."""
        cfg = self.cfg
        dt = x_BTD.dtype
        q_BTQH = jnp.einsum("BTD,DQH->BTQH", x_BTD, self.q_DQH[...].astype(dt))
        k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.k_DKH[...].astype(dt))
        v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, self.v_DKH[...].astype(dt))
        if cfg.qkv_bias:
            q_BTQH = q_BTQH + self.q_bias_QH[...].astype(dt)
            k_BTKH = k_BTKH + self.k_bias_KH[...].astype(dt)
            v_BTKH = v_BTKH + self.v_bias_KH[...].astype(dt)
        if cfg.qk_norm:
            q_BTQH = rms_norm(q_BTQH, self.q_norm_H[...], cfg.norm_eps)
            k_BTKH = rms_norm(k_BTKH, self.k_norm_H[...], cfg.norm_eps)
        # A host constant (not state): folded into the compiled program.
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
        q_BTQH = apply_rope(q_BTQH, positions_BT, inv_freq)
        k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)
        return q_BTQH, k_BTKH, v_BTKH

    def output(self, attn_BTQH):
        dt = attn_BTQH.dtype
        out_BTD = jnp.einsum("BTQH,QHD->BTD", attn_BTQH, self.o_QHD[...].astype(dt))
        if self.cfg.o_bias:
            out_BTD = out_BTD + self.o_bias_D[...].astype(dt)
        return out_BTD


def _softmax_attend(scores, mask):
    scores = jnp.where(mask, scores, _MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


def full_attention(q_BTQH, k_BSKH, v_BSKH, mask_BTS):
    """Attention where every row has its own keys (training, scoring, prefill)."""
    B, T, Q, H = q_BTQH.shape
    K = k_BSKH.shape[2]
    q_BTKRH = q_BTQH.reshape(B, T, K, Q // K, H)
    scores_BKRTS = jnp.einsum("BTKRH,BSKH->BKRTS", q_BTKRH, k_BSKH,
                              preferred_element_type=jnp.float32) * (H ** -0.5)
    probs_BKRTS = _softmax_attend(scores_BKRTS, mask_BTS[:, None, None, :, :])
    out_BTKRH = jnp.einsum("BKRTS,BSKH->BTKRH", probs_BKRTS.astype(v_BSKH.dtype), v_BSKH)
    return out_BTKRH.reshape(B, T, Q, H)


def group_attention(q_NTQH, prefix_k_BSKH, prefix_v_BSKH, prefix_mask_BS, k_NCKH, v_NCKH,
                    decode_mask_TC, group_size):
    """Decode attention: the G rows of a group read their shared prompt K/V once.

    One softmax spans prompt slots S and the row's own decode slots C.
    """
    N, T, Q, H = q_NTQH.shape
    B, S, K, _ = prefix_k_BSKH.shape
    G, R, C = group_size, Q // K, k_NCKH.shape[1]
    q_BGTKRH = q_NTQH.reshape(B, G, T, K, R, H)
    scale = H ** -0.5
    s_pre = jnp.einsum("BGTKRH,BSKH->BGKRTS", q_BGTKRH, prefix_k_BSKH,
                       preferred_element_type=jnp.float32) * scale
    s_dec = jnp.einsum("BGTKRH,BGCKH->BGKRTC", q_BGTKRH, k_NCKH.reshape(B, G, C, K, H),
                       preferred_element_type=jnp.float32) * scale
    mask_pre = jnp.broadcast_to(prefix_mask_BS[:, None, None, None, None, :], s_pre.shape)
    mask_dec = jnp.broadcast_to(decode_mask_TC[None, None, None, None], s_dec.shape)
    probs = _softmax_attend(jnp.concatenate([s_pre, s_dec], -1),
                            jnp.concatenate([mask_pre, mask_dec], -1))
    p_pre, p_dec = probs[..., :S], probs[..., S:]
    dt = v_NCKH.dtype
    out = jnp.einsum("BGKRTS,BSKH->BGTKRH", p_pre.astype(dt), prefix_v_BSKH)
    out = out + jnp.einsum("BGKRTC,BGCKH->BGTKRH", p_dec.astype(dt),
                           v_NCKH.reshape(B, G, C, K, H))
    return out.reshape(N, T, Q, H)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd = as_dtype(cfg.param_dtype)
        self.gate_DF = _param(rngs, (cfg.dim, cfg.mlp_dim), ("embed", "mlp"), pd)
        self.up_DF = _param(rngs, (cfg.dim, cfg.mlp_dim), ("embed", "mlp"), pd)
        self.down_FD = _param(rngs, (cfg.mlp_dim, cfg.dim), ("mlp", "embed"), pd)

    def __call__(self, x_BTD):
        dt = x_BTD.dtype
        gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_DF[...].astype(dt))
        up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, self.up_DF[...].astype(dt))
        return jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate_BTF) * up_BTF,
                          self.down_FD[...].astype(dt))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pd = as_dtype(cfg.param_dtype)
        self.cfg = cfg
        self.attn_norm_D = _param(rngs, (cfg.dim,), ("embed",), pd, "ones")
        self.attn = Attention(cfg, rngs)
        self.mlp_norm_D = _param(rngs, (cfg.dim,), ("embed",), pd, "ones")
        self.mlp = MLP(cfg, rngs)

    def _mlp_block(self, x_BTD):
        return x_BTD + self.mlp(rms_norm(x_BTD, self.mlp_norm_D[...], self.cfg.norm_eps))

    def __call__(self, x_BTD, positions_BT, mask_BTS):
        """Full-sequence layer; also returns this layer's K/V (prefill keeps them)."""
        h_BTD = rms_norm(x_BTD, self.attn_norm_D[...], self.cfg.norm_eps)
        q_BTQH, k_BTKH, v_BTKH = self.attn.project(h_BTD, positions_BT)
        x_BTD = x_BTD + self.attn.output(full_attention(q_BTQH, k_BTKH, v_BTKH, mask_BTS))
        return self._mlp_block(x_BTD), (k_BTKH, v_BTKH)

    def decode(self, x_NTD, positions_NT, layer: int, cache: KVCache):
        h_NTD = rms_norm(x_NTD, self.attn_norm_D[...], self.cfg.norm_eps)
        q_NTQH, k_NTKH, v_NTKH = self.attn.project(h_NTD, positions_NT)
        T, C = x_NTD.shape[1], cache.num_decode_slots
        start = (layer, 0, cache.index, 0, 0)
        k_LNCKH = jax.lax.dynamic_update_slice(
            cache.k_LNTKH, k_NTKH[None].astype(cache.k_LNTKH.dtype), start)
        v_LNCKH = jax.lax.dynamic_update_slice(
            cache.v_LNTKH, v_NTKH[None].astype(cache.v_LNTKH.dtype), start)
        # Query t sits in slot index + t and sees every earlier slot and itself.
        slots_C = jnp.arange(C)
        decode_mask_TC = slots_C[None, :] <= (cache.index + jnp.arange(T))[:, None]
        attn_NTQH = group_attention(
            q_NTQH, cache.prefix_k_LBSKH[layer].astype(x_NTD.dtype),
            cache.prefix_v_LBSKH[layer].astype(x_NTD.dtype), cache.prefix_valid_BS,
            k_LNCKH[layer].astype(x_NTD.dtype), v_LNCKH[layer].astype(x_NTD.dtype),
            decode_mask_TC, cache.group_size)
        x_NTD = x_NTD + self.attn.output(attn_NTQH)
        cache = cache.replace(k_LNTKH=k_LNCKH, v_LNTKH=v_LNCKH)
        return self._mlp_block(x_NTD), cache


def causal_mask(valid_BT: jnp.ndarray) -> jnp.ndarray:
    """[B, T, T] mask: key s is visible to query t if s <= t and key s is a real token."""
    T = valid_BT.shape[1]
    causal_TT = jnp.tril(jnp.ones((T, T), bool))
    return causal_TT[None] & valid_BT[:, None, :].astype(bool)


class Transformer(nnx.Module):
    """The policy. `model(tokens_BT)` returns float32 logits `[B, T, V]`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        pd = as_dtype(cfg.param_dtype)
        self.cfg = cfg
        self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.dim), ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm_D = _param(rngs, (cfg.dim,), ("embed",), pd, "ones")
        if not cfg.tie_embeddings:
            self.lm_head_DV = _param(rngs, (cfg.dim, cfg.vocab_size), ("embed", "vocab"), pd)

    # -- pieces -----------------------------------------------------------------------------
    def embed(self, tokens_BT):
        dt = as_dtype(self.cfg.dtype)
        return jnp.take(self.embed_VD[...], tokens_BT, axis=0).astype(dt)

    def logits(self, h_BTD):
        """Final norm and LM head; logits are float32 for a stable softmax."""
        h_BTD = rms_norm(h_BTD, self.final_norm_D[...], self.cfg.norm_eps)
        dt = h_BTD.dtype
        if self.cfg.tie_embeddings:
            return jnp.einsum("BTD,VD->BTV", h_BTD, self.embed_VD[...].astype(dt),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("BTD,DV->BTV", h_BTD, self.lm_head_DV[...].astype(dt),
                          preferred_element_type=jnp.float32)

    def hidden(self, tokens_BT, positions_BT=None, valid_BT=None, *, collect_kv=False):
        """Residual stream after the last layer (before the final norm)."""
        B, T = tokens_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if valid_BT is None:
            valid_BT = jnp.ones((B, T), bool)
        mask_BTS = causal_mask(valid_BT)
        x_BTD = self.embed(tokens_BT)
        ks, vs = [], []
        for layer in self.layers:
            if self.cfg.remat and not collect_kv:
                x_BTD, (k, v) = nnx.remat(DecoderLayer.__call__)(layer, x_BTD, positions_BT,
                                                                mask_BTS)
            else:
                x_BTD, (k, v) = layer(x_BTD, positions_BT, mask_BTS)
            if collect_kv:
                ks.append(k)
                vs.append(v)
        if collect_kv:
            return x_BTD, (jnp.stack(ks), jnp.stack(vs))
        return x_BTD

    # -- entry points -----------------------------------------------------------------------
    def __call__(self, tokens_BT, positions_BT=None, valid_BT=None):
        return self.logits(self.hidden(tokens_BT, positions_BT, valid_BT))

    def prefill(self, tokens_BS, positions_BS, valid_BS):
        """Run the prompts once. Returns last-slot logits `[B, V]` and K/V `[L, B, S, K, H]`.

        Prompts are left-padded, so slot S-1 holds every row's last prompt token.
        """
        h_BSD, (k_LBSKH, v_LBSKH) = self.hidden(tokens_BS, positions_BS, valid_BS,
                                                collect_kv=True)
        return self.logits(h_BSD[:, -1:])[:, 0], (k_LBSKH, v_LBSKH)

    def decode(self, tokens_NT, positions_NT, cache: KVCache):
        """Append T tokens per row to the cache; returns logits `[N, T, V]` and the cache."""
        x_NTD = self.embed(tokens_NT)
        for i, layer in enumerate(self.layers):
            x_NTD, cache = layer.decode(x_NTD, positions_NT, i, cache)
        cache = cache.replace(index=cache.index + tokens_NT.shape[1])
        return self.logits(x_NTD), cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def logical_axes(state: Any) -> Any:
    """Pytree of logical axis-name tuples matching `nnx.state(model)`."""
    return jax.tree.map(lambda v: v.get_metadata().get("logical_axes"), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
