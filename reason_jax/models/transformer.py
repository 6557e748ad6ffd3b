"""Decoder-only transformer covering Llama 3, Qwen2/Qwen2.5 and Qwen3.

Dimension legend (../shared/DESIGN.md), one meaning per letter:
  B batch of prompts · G samples per prompt · N = B*G samples · R decode slots (rows in
  flight) · S prompt (prefix) length · T tokens of a forward call; in decoding, max new
  tokens (= the slot cache's columns) · D model width · F MLP hidden · Q query heads ·
  K key/value heads · q = Q/K query heads per KV head (lower case) · H head dim · V vocab ·
  L layers.

Every parameter carries `logical_axes` metadata (names from `reason_jax.sharding.rules`), so
sharding is decided by a rules table, never inside the model. The module is an NNX module;
jitted code takes plain state via `nnx.split` / `nnx.merge`.

Three ways to call it (one code path for the maths):
  * `model(tokens_BT, positions_BT, valid_BT=...)` -> logits `[B, T, V]` (training, scoring);
  * `model.prefill(...)` -> last-token logits plus per-layer K/V to seed a `KVCache`;
  * `model.decode(tokens_R, positions_R, cache)` -> one token per decode slot: logits `[R, V]`
    and the cache with that token's K/V written in place.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reason_jax.models.config import ModelConfig, as_dtype
from reason_jax.models.kv_cache import KVCache
from reason_jax.models.rope import inverse_frequencies, rope_cos_sin, rotate

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

    def rope(self, positions_BT):
        """The rotary cos/sin for these positions (the same for every layer)."""
        cfg = self.cfg
        # A host constant (not state): folded into the compiled program.
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
        return rope_cos_sin(positions_BT, inv_freq)

    def project(self, x_BTD, positions_BT, rope=None):
        """Queries, keys and values with bias, q/k norm and rotary embedding applied. `rope`:
        precomputed `self.rope(positions_BT)` (decode computes it once for all layers)."""
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
        cos_BT1P, sin_BT1P = self.rope(positions_BT) if rope is None else rope
        return rotate(q_BTQH, cos_BT1P, sin_BT1P), rotate(k_BTKH, cos_BT1P, sin_BT1P), v_BTKH

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
    q_BTKqH = q_BTQH.reshape(B, T, K, Q // K, H)
    scores_BKqTS = jnp.einsum("BTKqH,BSKH->BKqTS", q_BTKqH, k_BSKH,
                              preferred_element_type=jnp.float32) * (H ** -0.5)
    probs_BKqTS = _softmax_attend(scores_BKqTS, mask_BTS[:, None, None, :, :])
    out_BTKqH = jnp.einsum("BKqTS,BSKH->BTKqH", probs_BKqTS.astype(v_BSKH.dtype), v_BSKH)
    return out_BTKqH.reshape(B, T, Q, H)


def _softmax_part(s_XS, valid_XS, scale):
    """Scores over one part of the keys -> (max, exp-scores, sum) for a flash-style merge."""
    s_XS = jnp.where(valid_XS, s_XS * scale, _MASK_VALUE)
    m_X1 = s_XS.max(-1, keepdims=True)
    e_XS = jnp.exp(s_XS - m_X1)
    return m_X1, e_XS, e_XS.sum(-1, keepdims=True)


def _grouped(x_RKq, B: int, G: int):
    """[B*G, K, q, ...] (slot layout) <-> [B, K, G*q, ...] (one prompt's G slots together)."""
    R, K, q = x_RKq.shape[:3]
    return x_RKq.reshape(B, G, K, q, *x_RKq.shape[3:]).swapaxes(1, 2).reshape(
        B, K, G * q, *x_RKq.shape[3:])


def _ungrouped(x_BKg, G: int):
    B, K, g = x_BKg.shape[:3]
    return x_BKg.reshape(B, K, G, g // G, *x_BKg.shape[3:]).swapaxes(1, 2).reshape(
        B * G, K, g // G, *x_BKg.shape[3:])


def decode_attention(q_RQH, cache: KVCache, layer: int, chunks):
    """One query per decode slot over its prompt's prefix and its sample's cached tokens.

    `chunks`: this layer's slot-cache chunks `[(k_RKHT, v_RKTH), ...]`, each holding T/n
    columns; a chunk no slot reaches into is skipped (`lax.cond`). The softmax spans the
    prefix and every chunk; each part is computed on its own and the parts are merged
    flash-style (rescaled by the largest max). The dots read the cache in its stored layout,
    batch dimensions (slot or prompt, KV head) first, keys contracted over H (`[., K, H, T]`),
    values over T (`[., K, T, H]`), so no step transposes a cache. The prefix part reads the
    prefix table by index: in lock-step (`cache.group_size` = G, slot r decodes a sample of
    prompt r // G) each prompt's rows are read once for its G slots, whose queries are
    stacked `[B, K, G*q, H]`; otherwise every slot gathers its prompt's rows.
    """
    R, Q, H = q_RQH.shape
    K = chunks[0][0].shape[1]
    scale = H ** -0.5
    dt = chunks[0][1].dtype
    q_RKqH = q_RQH.reshape(R, K, Q // K, H).astype(dt)
    f32 = jnp.float32
    parts = []  # (max, normaliser, unnormalised output) of each part, slot layout
    for chunk, (k_RKHT, v_RKTH) in enumerate(chunks):
        def attend(q_RKqH, k_RKHT, v_RKTH, visible_RT):
            s_dec = jnp.einsum("RKqH,RKHT->RKqT", q_RKqH, k_RKHT, preferred_element_type=f32)
            m, e, l = _softmax_part(s_dec, visible_RT[:, None, None, :], scale)
            return m, l, jnp.einsum("RKqT,RKTH->RKqH", e.astype(dt), v_RKTH,
                                    preferred_element_type=f32)

        def skip(q_RKqH, k_RKHT, v_RKTH, visible_RT):
            stat = jnp.full((R, K, Q // K, 1), _MASK_VALUE, f32)
            return stat, jnp.zeros_like(stat), jnp.zeros((R, K, Q // K, H), f32)

        operands = (q_RKqH, k_RKHT, v_RKTH, cache.chunk_visible(chunk))
        parts.append(attend(*operands) if chunk == 0 else
                     jax.lax.cond(cache.chunk_needed(chunk), attend, skip, *operands))
    G = cache.group_size
    if G:
        B = R // G
        s_BKgS = jnp.einsum("BKgH,BKHS->BKgS", _grouped(q_RKqH, B, G),
                            cache.prefix_k_BKHS[layer], preferred_element_type=f32)
        m, e_BKgS, l = _softmax_part(s_BKgS, cache.prefix_valid_BS[:, None, None, :], scale)
        o_BKgH = jnp.einsum("BKgS,BKSH->BKgH", e_BKgS.astype(dt), cache.prefix_v_BKSH[layer],
                            preferred_element_type=f32)
        parts.append(tuple(_ungrouped(x, G) for x in (m, l, o_BKgH)))
    else:
        pk_RKHS, pv_RKSH, valid_RS = cache.prefix_for_slots(layer)
        s_pre = jnp.einsum("RKqH,RKHS->RKqS", q_RKqH, pk_RKHS, preferred_element_type=f32)
        m, e, l = _softmax_part(s_pre, valid_RS[:, None, None, :], scale)
        parts.append((m, l, jnp.einsum("RKqS,RKSH->RKqH", e.astype(dt), pv_RKSH,
                                       preferred_element_type=f32)))
    # Every slot sees at least one prompt token and its own new token, so the largest max is
    # real; a part with nothing visible (all masked) gets weight exp(-1e30 - m) = 0.
    m = functools.reduce(jnp.maximum, [p[0] for p in parts])
    w = [jnp.exp(p[0] - m) for p in parts]
    num = functools.reduce(jnp.add, [wi * p[2] for wi, p in zip(w, parts)])
    den = functools.reduce(jnp.add, [wi * p[1] for wi, p in zip(w, parts)])
    return (num / den).reshape(R, Q, H).astype(q_RQH.dtype)


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

    def decode(self, x_R1D, rope, layer: int, cache: KVCache):
        """One token per slot: writes its K/V into column `slot_fed_R` of the slot cache (in
        place), attends, and returns the layer output and this layer's cache chunks. `rope`:
        the rotary cos/sin of the slots' positions."""
        h_R1D = rms_norm(x_R1D, self.attn_norm_D[...], self.cfg.norm_eps)
        q_R1QH, k_R1KH, v_R1KH = self.attn.project(h_R1D, None, rope)
        ks, vs = cache.write(layer, k_R1KH[:, 0], v_R1KH[:, 0])
        attn_RQH = decode_attention(q_R1QH[:, 0], cache, layer, list(zip(ks, vs)))
        x_R1D = x_R1D + self.attn.output(attn_RQH[:, None])
        return self._mlp_block(x_R1D), ks, vs


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

    def rope_table(self, num_positions: int):
        """Rotary cos and sin of positions [0, num_positions), `[X, H/2]` each. Decode gathers
        its rows: computed inside the step, XLA:CPU fuses cos/sin into every head's rotation
        in every layer and evaluates them per element."""
        cos, sin = self.layers[0].attn.rope(jnp.arange(num_positions, dtype=jnp.int32)[None])
        return cos[0, :, 0], sin[0, :, 0]

    def decode(self, tokens_R, positions_R, cache: KVCache, rope_table=None):
        """Feed one token per decode slot. Returns logits `[R, V]` and the cache with the
        tokens' K/V written (column `slot_fed_R` of each slot) and `slot_fed_R` advanced.
        `rope_table`: `self.rope_table(X)` for positions < X, computed once per decode loop."""
        x_R1D = self.embed(tokens_R[:, None])
        if rope_table is None:
            rope = self.layers[0].attn.rope(positions_R[:, None])
        else:
            rope = tuple(jnp.take(t_XP, positions_R, axis=0)[:, None, None, :]
                         for t_XP in rope_table)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x_R1D, k_chunks, v_chunks = layer.decode(x_R1D, rope, i, cache)
            ks.append(k_chunks)
            vs.append(v_chunks)
        cache = cache.replace(k_RKHT=tuple(ks), v_RKTH=tuple(vs),
                              slot_fed_R=cache.slot_fed_R + 1)
        return self.logits(x_R1D)[:, 0], cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def logical_axes(state: Any) -> Any:
    """Pytree of logical axis-name tuples matching `nnx.state(model)`."""
    return jax.tree.map(lambda v: v.get_metadata().get("logical_axes"), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))
