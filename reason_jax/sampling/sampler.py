"""The fused group sampler: prefill once per prompt, then continuous-batching decode in
`lax.while_loop`s, all in one jitted call with no host round trip per token.

For B prompts and group size G it returns the N = B*G samples (rows of one prompt adjacent):

1. Prompts are padded to a length bucket S (new prompt lengths reuse compiled code) and
   left-aligned to the end of the bucket.
2. Prefill runs once per *prompt*. Its K/V form the prefix table of the cache (`KVCache`) and
   its last logits are kept: every sample of the prompt draws its first token from them.
3. Decode runs R <= N *slots* (`max_rows`, or as many as `kv_cache_gb` allows; default N).
   Samples wait in a device-side queue in order n = b*G + g. A slot that is free (its sample
   emitted an EOS id or reached its token limit) takes the next waiting sample at the end of
   the same step, drawing that sample's first token from its prompt's prefill logits; its next
   decode feeds that token. The loop ends when every sample is done. With R = N every sample
   starts at once: lock-step decoding.
4. Sample n's token t is drawn with Gumbel noise from the counter (key, n, t)
   (`processing.gumbel_noise`), so its tokens and log-probs do not depend on R, on the slot
   or the step that produced them, or on the mesh.

5. Phases, each its own `while_loop` over the same step: with R < N, once the queue is empty
   and at most half the slots are live, the live samples and their cache rows move into R/2
   slots (then R/4, R/8), so the tail of long samples stops paying for R rows.

No step is wasted on a token whose logits are never read: a sample of length l costs l - 1
decode steps (its first token comes from the prefill).

With P data-parallel shards (the prompts' sharding over the mesh's data axes) prompts,
samples, slots and the queue are split into P contiguous blocks: shard p's slots decode only
shard p's samples, so the decode never moves K/V between devices. R is rounded up to a
multiple of P.

Dimensions: B prompts, G group, N = B*G samples, R slots, S prompt bucket, T =
max_new_tokens, V vocab, P shards (Np = N/P samples, Rp = R/P slots, Bp = B/P prompts each).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from reason_jax.data.bucketing import bucket_length
from reason_jax.models.kv_cache import KVCache, gather_rows
from reason_jax.sampling import memory
from reason_jax.sampling.processing import key_words, sample_tokens
from reason_jax.sharding.rules import ROLLOUT_RULES, partition_spec

log = logging.getLogger(__name__)


@flax.struct.dataclass
class SampleOutput:
    """Device arrays, one row per sample n = b*G + g. Log-probs are of the sampled tokens
    under softmax(logits / tau), tau the sampling temperature (1 for greedy), *without*
    top-k/top-p truncation: the pi_old of the importance ratio when the learner scales its
    logits by 1/tau the same way (as verl, TRL and Tunix do)."""

    tokens: jnp.ndarray  # [N, T] int32; pad after a row stops
    logprobs: jnp.ndarray  # [N, T] float32; 0 where mask is 0
    mask: jnp.ndarray  # [N, T] bool: generated tokens up to and including the first EOS
    lengths: jnp.ndarray  # [N] int32
    truncated: jnp.ndarray  # [N] bool: stopped at its token limit without an EOS
    prompt_tokens: jnp.ndarray  # [N, S] int32, left-padded (S is the bucket)
    prompt_valid: jnp.ndarray  # [N, S] bool
    decode_steps: jnp.ndarray  # int32 scalar: decode steps (loop iterations, all phases)
    slot_steps: jnp.ndarray  # int32 scalar: sum over decode steps of the slots decoded
    num_slots: int = flax.struct.field(pytree_node=False, default=0)  # R


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Everything static about a sampler call. With the model's graphdef and the shapes of the
    traced arguments (prompt bucket S, B) it is the compilation key: temperature, top-p, the
    seed and the prompts are traced, so changing them reuses the compiled program."""

    group_size: int  # G
    max_new_tokens: int  # T
    num_slots: int  # R, a multiple of the shards
    top_k: int | None = None
    use_top_p: bool = False
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    cache_dtype: str = "float32"
    mesh: Any = None  # the prompts' mesh when they are sharded over data axes, else None
    data_axes: tuple[str, ...] = ()  # mesh axes that split prompts, samples and slots

    @property
    def shards(self) -> int:
        """P: contiguous blocks of prompts, samples and slots, one per data-parallel shard."""
        return math.prod(self.mesh.shape[a] for a in self.data_axes) if self.mesh else 1

    def cache_chunks(self) -> int:
        """The slot cache in n chunks that attention reads only when some sample reaches
        them: 4 (or 2) chunks of >= 128 columns when T splits so, else 1."""
        T = self.max_new_tokens
        return next((n for n in (4, 2) if T % n == 0 and T // n >= 128), 1)

    def phase_slots(self, num_samples: int) -> tuple[int, ...]:
        """Slot counts of the decode phases. Lock-step (R = N): one phase. Otherwise, once the
        queue is empty and at most half the slots are live, the live samples move into half
        as many slots: R, R/2, R/4, R/8 (multiples of the shards), so the tail of long
        samples does not keep paying for R slots."""
        P, out = self.shards, [self.num_slots]
        if self.num_slots >= num_samples:
            return tuple(out)
        while len(out) < 4 and out[-1] // 2 >= P and (out[-1] // 2) % P == 0:
            out.append(out[-1] // 2)
        return tuple(out)

    def constrain(self, x, *rest_spec):
        """Split `x`'s leading dimension over the data axes (no-op on one device)."""
        if self.mesh is None:
            return x
        lead = self.data_axes[0] if len(self.data_axes) == 1 else self.data_axes
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(self.mesh, PartitionSpec(lead, *rest_spec)))


@flax.struct.dataclass
class SamplingState:
    """The decode loop's carry.

    Slot r belongs to shard r // Rp; `sample_R` numbers samples within the shard (global n =
    shard * Np + sample). A slot is *live* while its sample has not ended; it then holds the
    sample's last token (the next decode input), and the sample has `cache.slot_fed_R[r] + 1`
    tokens, all but the last in its slot's cache. Tokens and log-probs are written per sample
    as they are drawn; nothing is written after a sample ends, so its length is read off its
    tokens at the end (the first EOS id, else its limit)."""

    step: jnp.ndarray  # int32: decode steps done
    slot_steps: jnp.ndarray  # int32: sum over steps of the slots decoded (R of each phase)
    cache: KVCache  # prefix table and slot cache; each slot's prompt and fed-token count
    sample_R: jnp.ndarray  # int32 [R]: the slot's sample (shard-local)
    token_R: jnp.ndarray  # int32 [R]: the slot's last token
    live_R: jnp.ndarray  # bool [R]
    next_P: jnp.ndarray  # int32 [P]: each shard's first sample not yet started (its queue)
    tokens_NT: jnp.ndarray  # int32, pad until written
    logprobs_NT: jnp.ndarray  # float32, 0 until written


def left_align(tokens_BS, lengths_B, pad_id):
    """Right-padded prompts -> left-padded ones, plus validity and position ids."""
    B, S = tokens_BS.shape
    shift_B = S - lengths_B
    src_BS = jnp.arange(S)[None, :] - shift_B[:, None]
    valid_BS = src_BS >= 0
    left_BS = jnp.where(valid_BS, jnp.take_along_axis(tokens_BS, jnp.maximum(src_BS, 0), 1),
                        pad_id)
    positions_BS = jnp.maximum(src_BS, 0).astype(jnp.int32)
    return left_BS.astype(jnp.int32), valid_BS, positions_BS


class _Loop:
    """The pieces of one sampler program (closed over by the jitted function only). Slot
    counts come from the state's shapes: they shrink from phase to phase."""

    def __init__(self, sp: SamplingParams, model, key, temperature, top_p, lengths_B,
                 limit_N, first_logits_BV, constrain_cache, rope_table):
        self.sp, self.model, self.words = sp, model, key_words(key)
        self.temperature, self.top_p = temperature, (top_p if sp.use_top_p else None)
        self.lengths_B, self.limit_N, self.first_logits_BV = lengths_B, limit_N, first_logits_BV
        self.constrain_cache, self.rope_table = constrain_cache, rope_table
        self.P, self.G, self.T = sp.shards, sp.group_size, sp.max_new_tokens
        self.N = limit_N.shape[0]
        self.Np = self.N // self.P
        self.eos = jnp.asarray(sp.eos_ids or (-1,), jnp.int32)

    def draw(self, sample_R, t_R, logits_RV):
        R = sample_R.shape[0]
        shard_R = jnp.arange(R, dtype=jnp.int32) // (R // self.P)
        return sample_tokens(self.words, shard_R * self.Np + sample_R, t_R, logits_RV,
                             temperature=self.temperature, top_k=self.sp.top_k,
                             top_p=self.top_p)

    def _scatter(self, buf_NT, write_R, sample_R, t_R, values_R):
        """buf[sample, t] = value for the slots in write_R, within each shard."""
        P, Np = self.P, self.Np
        j_PR = jnp.where(write_R, sample_R, Np).reshape(P, -1)  # Np: out of range, dropped
        out = jax.vmap(lambda b, j, t, v: b.at[j, t].set(v, mode="drop"))(
            buf_NT.reshape(P, Np, -1), j_PR, t_R.reshape(P, -1), values_R.reshape(P, -1))
        return self.sp.constrain(out.reshape(buf_NT.shape))

    def record(self, parts, sample_R, write_R, t_R, tok_R, logp_R):
        """Store token t of the slots in write_R; a slot's sample ends on an EOS id or at its
        limit. `parts` = (tokens_NT, logprobs_NT, live_R, token_R) of the state."""
        tokens_NT, logprobs_NT, live_R, token_R = parts
        limit_R = gather_rows(self.limit_N, sample_R, self.P)
        eos_R = jnp.any(tok_R[:, None] == self.eos[None, :], -1)
        ended_R = eos_R | (t_R + 1 >= limit_R)
        return (self._scatter(tokens_NT, write_R, sample_R, t_R, tok_R),
                self._scatter(logprobs_NT, write_R, sample_R, t_R, logp_R),
                jnp.where(write_R, ~ended_R, live_R),
                jnp.where(write_R, tok_R, token_R))

    def refill(self, st: SamplingState) -> SamplingState:
        """Every free slot takes its shard's next waiting sample and draws the sample's first
        token from the prompt's prefill logits (skipped, in a `lax.cond`, on steps where no
        slot takes a sample: every step of lock-step decoding but the first)."""
        P, Np, R = self.P, self.Np, st.live_R.shape[0]
        free_PR = ~st.live_R.reshape(P, -1)
        j_PR = st.next_P[:, None] + jnp.cumsum(free_PR, axis=1) - 1
        take_PR = free_PR & (j_PR < Np)
        take_R, j_R = take_PR.reshape(R), j_PR.reshape(R)
        sample_R = jnp.where(take_R, j_R, st.sample_R)
        prompt_R = sample_R // self.G

        def first_tokens(parts):
            logits_RV = gather_rows(self.first_logits_BV, prompt_R, P)
            t_R = jnp.zeros((R,), jnp.int32)
            tok_R, logp_R = self.draw(sample_R, t_R, logits_RV)
            return self.record(parts, sample_R, take_R, t_R, tok_R, logp_R)

        parts = jax.lax.cond(jnp.any(take_R), first_tokens, lambda parts: parts,
                             (st.tokens_NT, st.logprobs_NT, st.live_R, st.token_R))
        return st.replace(
            sample_R=sample_R,
            next_P=jnp.minimum(st.next_P + free_PR.sum(1), Np),
            cache=st.cache.assign(take_R, prompt_R, live_R=parts[2]),
            **dict(zip(("tokens_NT", "logprobs_NT", "live_R", "token_R"), parts)))

    def running(self, st: SamplingState):
        return jnp.any(st.live_R) | jnp.any(st.next_P < self.Np)

    def fits(self, st: SamplingState, slots: int):
        """Every shard's queue is empty and its live samples fit in slots / P slots."""
        live_P = st.live_R.reshape(self.P, -1).sum(1)
        return jnp.all(st.next_P >= self.Np) & jnp.all(live_P <= slots // self.P)

    def compact(self, st: SamplingState, slots: int) -> SamplingState:
        """Move each shard's live samples (and their cache rows) into `slots` slots."""
        P = self.P
        order_PR = jnp.argsort(~st.live_R.reshape(P, -1), axis=1, stable=True)
        keep_R = order_PR[:, :slots // P].reshape(slots)

        def take(x_R):
            return self.sp.constrain(gather_rows(x_R, keep_R, P))

        return st.replace(cache=self.constrain_cache(st.cache.select_slots(keep_R)),
                          sample_R=take(st.sample_R), token_R=take(st.token_R),
                          live_R=take(st.live_R))

    def body(self, st: SamplingState) -> SamplingState:
        cache = st.cache
        prompt_len_R = gather_rows(self.lengths_B, cache.slot_prompt_R, self.P)
        logits_RV, cache = self.model.decode(st.token_R, prompt_len_R + cache.slot_fed_R, cache,
                                             self.rope_table)
        t_R = cache.slot_fed_R  # the index of the token drawn now
        tok_R, logp_R = self.draw(st.sample_R, t_R, logits_RV)
        parts = self.record((st.tokens_NT, st.logprobs_NT, st.live_R, st.token_R), st.sample_R,
                            st.live_R, t_R, tok_R, logp_R)
        st = st.replace(step=st.step + 1, slot_steps=st.slot_steps + st.live_R.shape[0],
                        cache=cache,
                        **dict(zip(("tokens_NT", "logprobs_NT", "live_R", "token_R"), parts)))
        return self.refill(st)

    def decode(self, st: SamplingState, phases: tuple[int, ...]) -> SamplingState:
        """One `lax.while_loop` per phase; a phase ends when all samples are done or when the
        live ones fit in the next phase's slots."""
        for i, slots in enumerate(phases):
            if i:
                st = self.compact(st, slots)
            if i + 1 < len(phases):
                nxt = phases[i + 1]
                st = jax.lax.while_loop(
                    lambda s, nxt=nxt: self.running(s) & ~self.fits(s, nxt), self.body, st)
            else:
                st = jax.lax.while_loop(self.running, self.body, st)
        return st


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample(sp: SamplingParams, graphdef, state, tokens_BS, lengths_B, limit_N, key,
            temperature, top_p):
    model = nnx.merge(graphdef, state)
    B, S = tokens_BS.shape
    G, T, R = sp.group_size, sp.max_new_tokens, sp.num_slots
    N = B * G
    left_BS, valid_BS, positions_BS = left_align(tokens_BS, lengths_B, sp.pad_id)
    logits_BV, (k_LBSKH, v_LBSKH) = model.prefill(left_BS, positions_BS, valid_BS)
    cache = KVCache.create(k_LBSKH, v_LBSKH, valid_BS, num_slots=R, max_new_tokens=T,
                           shards=sp.shards, group_size=G if R == N else 0,
                           cache_chunks=sp.cache_chunks(), dtype=sp.cache_dtype)
    kv = None if sp.mesh is None else partition_spec(("kv_heads",), ROLLOUT_RULES, sp.mesh,
                                                     (k_LBSKH.shape[3],))[0]

    def constrain_cache(c: KVCache) -> KVCache:
        """Slot rows over the data axes, KV heads over `tensor` where the rules say so."""
        return c.replace(k_RKHT=jax.tree.map(lambda a: sp.constrain(a, kv), c.k_RKHT),
                         v_RKTH=jax.tree.map(lambda a: sp.constrain(a, kv), c.v_RKTH))

    limit_N = jnp.full((N,), T, jnp.int32) if limit_N is None else \
        sp.constrain(jnp.clip(limit_N, 1, T).astype(jnp.int32))
    # Decoded tokens sit at positions < S + T.
    loop = _Loop(sp, model, key, temperature, top_p, lengths_B, limit_N, logits_BV,
                 constrain_cache, model.rope_table(S + T))
    P = sp.shards
    init = SamplingState(
        step=jnp.zeros((), jnp.int32),
        slot_steps=jnp.zeros((), jnp.int32),
        cache=constrain_cache(cache),
        sample_R=sp.constrain(jnp.zeros((R,), jnp.int32)),
        token_R=sp.constrain(jnp.zeros((R,), jnp.int32)),
        live_R=sp.constrain(jnp.zeros((R,), bool)),
        next_P=sp.constrain(jnp.zeros((P,), jnp.int32)),
        tokens_NT=sp.constrain(jnp.full((N, T), sp.pad_id, jnp.int32)),
        logprobs_NT=sp.constrain(jnp.zeros((N, T), jnp.float32)),
    )
    final = loop.decode(loop.refill(init), sp.phase_slots(N))
    # Nothing is written after a sample's first EOS (if pad_id is an EOS id, the pads after
    # a limit count as one only at or beyond the limit).
    eos_NT = jnp.any(final.tokens_NT[..., None] == loop.eos, -1)
    first_eos_N = jnp.min(jnp.where(eos_NT, jnp.arange(T), T), -1)
    lengths_N = jnp.minimum(first_eos_N + 1, limit_N)
    mask_NT = jnp.arange(T)[None, :] < lengths_N[:, None]
    return SampleOutput(
        tokens=final.tokens_NT,
        logprobs=final.logprobs_NT,
        mask=mask_NT,
        lengths=lengths_N,
        truncated=first_eos_N >= limit_N,
        prompt_tokens=jnp.repeat(left_BS, G, axis=0),
        prompt_valid=jnp.repeat(valid_BS, G, axis=0),
        decode_steps=final.step,
        slot_steps=final.slot_steps,
        num_slots=R,
    )


def _data_sharding(x) -> tuple[Any, tuple[str, ...]]:
    """(mesh, data axes) when `x`'s rows are split over mesh axes, else (None, ())."""
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or not sharding.spec or sharding.spec[0] is None:
        return None, ()
    lead = sharding.spec[0]
    axes = (lead,) if isinstance(lead, str) else tuple(lead)
    axes = tuple(a for a in axes if sharding.mesh.shape[a] > 1)
    return (sharding.mesh, axes) if axes else (None, ())


def _model_config(model, graphdef, state):
    cfg = getattr(model, "cfg", None)
    return cfg if cfg is not None else getattr(nnx.merge(graphdef, state), "cfg", None)


def generate(model: Any, prompt_tokens_BS, prompt_lengths_B, *, group_size: int = 1,
             max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_ids: Sequence[int] = (), seed: Any = 0,
             pad_id: int = 0, buckets: Sequence[int] | None = None,
             cache_dtype: Any = None, max_rows: int | None = None,
             kv_cache_gb: float | None = None, max_lengths=None) -> SampleOutput:
    """Sample `group_size` completions for each of B prompts in one jitted call.

    Args:
      model: a `Transformer`, or a `(graphdef, state)` pair (e.g. state resharded for rollout).
      prompt_tokens_BS: right-padded prompt ids; row b's prompt is `[b, :prompt_lengths_B[b]]`.
        A global array sharded over the mesh's data axes splits the decode the same way.
      group_size: G completions per prompt; output row b*G + g belongs to prompt b.
      temperature: 0 means greedy. Log-probs are of softmax(logits / temperature) (of the
        logits for greedy), never truncated by top-k/top-p.
      seed: int or PRNG key. Sample n's token t is drawn from the counter (key, n, t), so a
        seed reproduces a call exactly, whatever `max_rows` and the mesh are.
      buckets: allowed padded prompt lengths (default powers of two from 16).
      max_rows: R, decode slots (rows in flight); None: one per sample (lock-step). Rounded
        up to a multiple of the data-parallel shards.
      kv_cache_gb: per-device K/V budget in GiB; R is then at most what fits
        (`memory.slots_for_kv_budget`). With `max_rows` too, the smaller R wins.
      max_lengths: optional per-sample token limits `[N]` (<= max_new_tokens); a sample that
        reaches its limit stops there, as at max_new_tokens (benchmarks force long-tailed
        lengths with it). Calls with and without it compile separately.
    Returns:
      `SampleOutput`; `num_slots` is the R used and `decode_steps` the loop's iterations.
    """
    return _sample(*_prepare(**locals()))  # locals(): exactly the arguments, at this point


def lower_generate(model: Any, prompt_tokens_BS, prompt_lengths_B, **kwargs):
    """The `jax.stages.Lowered` program that `generate` runs with the same arguments (for its
    compiled memory or HLO)."""
    return _sample.lower(*_prepare(model, prompt_tokens_BS, prompt_lengths_B, **kwargs))


def _prepare(model, prompt_tokens_BS, prompt_lengths_B, *, group_size=1, max_new_tokens,
             temperature=1.0, top_k=None, top_p=None, eos_ids=(), seed=0, pad_id=0,
             buckets=None, cache_dtype=None, max_rows=None, kv_cache_gb=None,
             max_lengths=None) -> tuple:
    """`generate`'s arguments -> the arguments of `_sample` (static `SamplingParams` first)."""
    if isinstance(model, tuple):
        graphdef, state = model
    else:
        graphdef, state = nnx.split(model)
    tokens = np.asarray(prompt_tokens_BS) if not isinstance(prompt_tokens_BS, jax.Array) \
        else prompt_tokens_BS
    lengths = jnp.asarray(prompt_lengths_B, jnp.int32)
    B, S_in = tokens.shape
    S = bucket_length(S_in, buckets)
    if S != S_in:
        tokens = jnp.pad(jnp.asarray(tokens), ((0, 0), (0, S - S_in)), constant_values=pad_id)
    G, T = int(group_size), int(max_new_tokens)
    N = B * G
    mesh, data_axes = _data_sharding(tokens)
    shards = math.prod(mesh.shape[a] for a in data_axes) if mesh is not None else 1
    cfg = _model_config(model, graphdef, state) if (kv_cache_gb or cache_dtype is None) \
        else None
    if cache_dtype is None:
        cache_dtype = cfg.dtype if cfg is not None else jax.tree.leaves(state)[0].dtype
    budget_rows = None
    if kv_cache_gb is not None:
        tensor = mesh.shape.get("tensor", 1) if mesh is not None else 1
        budget_rows = memory.slots_for_kv_budget(
            cfg, kv_cache_gb, batch_size=B, group_size=G, prompt_len=S, max_new_tokens=T,
            data_shards=shards, tensor=tensor, dtype=cache_dtype)
    R = memory.resolve_num_slots(N, data_shards=shards, max_rows=max_rows,
                                 budget_rows=budget_rows)
    if R != N:
        log.info("sampler: %d decode slots for %d samples (max_rows=%s, kv_cache_gb=%s)", R, N,
                 max_rows, kv_cache_gb)
    limit_N = None
    if max_lengths is not None:
        limit_N = np.asarray(max_lengths, np.int32)
        if limit_N.shape != (N,):
            raise ValueError(f"max_lengths must have one entry per sample ({N}), "
                             f"got shape {limit_N.shape}")
    key = jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed
    sp = SamplingParams(
        group_size=G, max_new_tokens=T, num_slots=R, top_k=int(top_k) if top_k else None,
        use_top_p=top_p is not None, eos_ids=tuple(int(e) for e in eos_ids),
        pad_id=int(pad_id), cache_dtype=jnp.dtype(cache_dtype).name, mesh=mesh,
        data_axes=data_axes)
    return (sp, graphdef, state, jnp.asarray(tokens, jnp.int32), lengths, limit_N, key,
            jnp.float32(temperature), jnp.float32(top_p if top_p is not None else 1.0))
