"""HF import/export of the policy model: logit parity with transformers, both config.json forms,
export round-trip, and the error messages for bad checkpoints.

Tiny random models are built with transformers once per module (odd sizes, GQA, tied and
untied embeddings, Llama 3 rope scaling, biases, q/k norm) and saved with `save_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

transformers = pytest.importorskip("transformers")

from reason_jax.models import (  # noqa: E402
    ModelConfig, UnsupportedConfigError, config_from_hf, config_to_hf, export_hf, from_hf)
from reason_jax.models.safetensors_io import read_header, write_file  # noqa: E402

VOCAB = 101
SEQ = 40  # > 2 * original_max_position_embeddings (16): every llama3 rope band is exercised
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
TOL = 1e-4

_COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
               max_position_embeddings=128, rms_norm_eps=1e-5)

# name -> (config class, model class, config kwargs, save kwargs)
CASES = {
    # GQA 6 query heads over 2 KV heads (R=3), untied head, Llama 3 rope scaling.
    "llama_gqa_untied_llama3rope": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
             rope_theta=10000.0, rope_scaling=dict(LLAMA3_SCALING)), {}),  # copy: HF edits it
    # attention_bias=True (q/k/v and o biases), tied embeddings, sharded safetensors + index.
    "llama_bias_tied_sharded": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
             attention_bias=True, rope_theta=500000.0), {"max_shard_size": "20KB"}),
    # Qwen2: q/k/v biases, R=4, untied.
    "qwen2_untied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
             rope_theta=1000000.0), {}),
    # Qwen2 tied (as Qwen2.5 small models).
    "qwen2_tied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=True,
             rope_theta=1000000.0), {}),
    # Qwen3: q/k norm, explicit head_dim != hidden/heads, tied.
    "qwen3_tied": (
        "Qwen3Config", "Qwen3ForCausalLM",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             tie_word_embeddings=True, rope_theta=1000000.0), {}),
    # Qwen3 untied, weights saved as bfloat16 and loaded into float32.
    "qwen3_untied_bf16": (
        "Qwen3Config", "Qwen3ForCausalLM",
        dict(num_attention_heads=6, num_key_value_heads=2, head_dim=8,
             tie_word_embeddings=False, rope_theta=1000000.0), {"bf16": True}),
}


def _randomise_(model: torch.nn.Module, seed: int) -> None:
    """HF inits biases to zero and norms to one: make every tensor random and nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def _build(name: str, root) -> dict:
    cfg_cls, model_cls, cfg_kw, save_kw = CASES[name]
    torch.manual_seed(0)
    hf_cfg = getattr(transformers, cfg_cls)(**_COMMON, **cfg_kw)
    model = getattr(transformers, model_cls)(hf_cfg).eval()
    _randomise_(model, seed=list(CASES).index(name))  # stable across runs
    path = str(root / name)
    save_kw = dict(save_kw)
    if save_kw.pop("bf16", False):
        model.to(torch.bfloat16).save_pretrained(path, **save_kw)
        # The reference: the bf16-rounded weights computed in fp32, read back by transformers
        # (not `model.float()`, which would also keep the rotary inv_freq buffer bf16-rounded).
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
    else:
        model.save_pretrained(path, **save_kw)
    model.config._attn_implementation = "eager"
    return {"path": path, "model": model}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: _build(name, root) for name in CASES}


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, size=(2, SEQ)).astype(np.int64)


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def _our_logits(model, tokens) -> np.ndarray:
    return np.asarray(model(jnp.asarray(tokens, jnp.int32)))


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------------------------
# Logit parity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_logit_parity_with_transformers(hf_models, tokens, name):
    case = hf_models[name]
    ours = from_hf(case["path"], dtype=jnp.float32)
    ref = _hf_logits(case["model"], tokens)
    got = _our_logits(ours, tokens)
    assert got.shape == ref.shape == (2, SEQ, VOCAB)
    assert got.dtype == np.float32
    diff = _max_diff(got, ref)
    print(f"\n[parity] {name}: max |ours - transformers| = {diff:.3e} "
          f"(logit scale {np.abs(ref).max():.2f})")
    assert diff <= TOL, diff


@pytest.mark.parametrize("name", ["llama_gqa_untied_llama3rope", "qwen2_tied"])
def test_left_padded_parity_with_transformers(hf_models, tokens, name):
    """Left-padded batch: our valid mask and positions match HF attention_mask/position_ids."""
    valid = np.ones(tokens.shape, bool)
    valid[1, :9] = False
    pos = np.clip(np.cumsum(valid, 1) - 1, 0, None)
    with torch.no_grad():
        ref = hf_models[name]["model"](
            torch.as_tensor(tokens), attention_mask=torch.as_tensor(valid.astype(np.int64)),
            position_ids=torch.as_tensor(pos)).logits.float().numpy()
    ours = from_hf(hf_models[name]["path"])
    got = np.asarray(ours(jnp.asarray(tokens, jnp.int32), jnp.asarray(pos, jnp.int32),
                          jnp.asarray(valid)))
    diff = _max_diff(got[valid], ref[valid])
    print(f"\n[parity left-padded] {name}: {diff:.3e}")
    assert diff <= TOL, diff
    assert np.all(np.isfinite(got))


def test_cases_cover_what_they_claim(hf_models):
    """Guard the fixtures: the features under test really are present in the checkpoints."""
    cfgs = {n: config_from_hf(_read_json(os.path.join(c["path"], "config.json")))
            for n, c in hf_models.items()}
    c = cfgs["llama_gqa_untied_llama3rope"]
    assert c.rope_scaling_dict["rope_type"] == "llama3" and c.num_heads == 3 * c.num_kv_heads
    assert not c.tie_embeddings
    c = cfgs["llama_bias_tied_sharded"]
    assert c.qkv_bias and c.o_bias and c.tie_embeddings
    assert os.path.exists(os.path.join(hf_models["llama_bias_tied_sharded"]["path"],
                                       "model.safetensors.index.json"))
    assert cfgs["qwen2_untied"].qkv_bias and not cfgs["qwen2_untied"].o_bias
    assert cfgs["qwen3_tied"].qk_norm and cfgs["qwen3_tied"].head_dim == 16
    path = hf_models["qwen3_untied_bf16"]["path"]
    (f,) = [p for p in os.listdir(path) if p.endswith(".safetensors")]
    assert {e.dtype.__name__ for e in read_header(os.path.join(path, f)).values()} == {"bfloat16"}
    # Biases and q/k norms really are random (HF would init them to 0 / 1).
    m = hf_models["qwen2_untied"]["model"]
    assert float(m.model.layers[0].self_attn.q_proj.bias.abs().min()) > 0
    m = hf_models["qwen3_tied"]["model"]
    assert float((m.model.layers[0].self_attn.k_norm.weight - 1).abs().max()) > 0.05


# ---------------------------------------------------------------------------------------------
# Both config.json forms
# ---------------------------------------------------------------------------------------------


def test_hub_and_transformers5_config_forms_agree(hf_models, tokens, tmp_path):
    src = hf_models["llama_gqa_untied_llama3rope"]["path"]
    saved = _read_json(os.path.join(src, "config.json"))
    assert "rope_parameters" in saved  # what transformers 5 writes
    t5 = dict(saved)
    t5.pop("rope_scaling", None)
    t5.pop("rope_theta", None)
    hub = dict(saved)
    params = dict(hub.pop("rope_parameters"))
    hub["rope_theta"] = params.pop("rope_theta")
    hub["rope_scaling"] = {**params, "type": params.pop("rope_type")}  # old key spelling too
    forms = {}
    for form, cfg in (("t5", t5), ("hub", hub)):
        d = tmp_path / form
        shutil.copytree(src, d)
        with open(d / "config.json", "w") as f:
            json.dump(cfg, f)
        forms[form] = from_hf(str(d))
    assert forms["t5"].cfg == forms["hub"].cfg
    assert forms["hub"].cfg.rope_theta == 10000.0
    assert forms["hub"].cfg.rope_scaling_dict == LLAMA3_SCALING
    a, b = _our_logits(forms["t5"], tokens), _our_logits(forms["hub"], tokens)
    np.testing.assert_array_equal(a, b)
    ref = _hf_logits(hf_models["llama_gqa_untied_llama3rope"]["model"], tokens)
    assert _max_diff(b, ref) <= TOL


def test_llama3_scaling_matters(hf_models, tokens, tmp_path):
    """Dropping rope scaling changes the logits: the parity test really checks the scaling."""
    src = hf_models["llama_gqa_untied_llama3rope"]["path"]
    d = tmp_path / "noscale"
    shutil.copytree(src, d)
    _edit_config(d, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ref = _hf_logits(hf_models["llama_gqa_untied_llama3rope"]["model"], tokens)
    assert _max_diff(_our_logits(from_hf(str(d)), tokens), ref) > 1e-2


# ---------------------------------------------------------------------------------------------
# Export round-trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa_untied_llama3rope", "llama_bias_tied_sharded",
                                  "qwen2_untied", "qwen3_tied"])
def test_export_roundtrip_loads_in_transformers(hf_models, tokens, tmp_path, name):
    ours = from_hf(hf_models[name]["path"])
    out = str(tmp_path / "export")
    # A small shard limit also exercises the sharded export (index file).
    export_hf(nnx.state(ours).to_pure_dict(), ours.cfg, out, max_shard_bytes=40_000)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager").eval()
    ref = _our_logits(ours, tokens)
    diff = _max_diff(_hf_logits(reloaded, tokens), ref)
    diff_orig = _max_diff(_hf_logits(hf_models[name]["model"], tokens), ref)
    print(f"\n[export] {name}: transformers(export) vs ours {diff:.3e}; "
          f"vs original HF model {diff_orig:.3e}")
    assert diff <= TOL
    # And we read our own export back to the same model.
    again = from_hf(out)
    assert again.cfg == ours.cfg
    np.testing.assert_allclose(_our_logits(again, tokens), ref, atol=1e-6, rtol=0)


def test_bf16_export_loads(hf_models, tokens, tmp_path):
    name = "qwen3_tied"
    ours = from_hf(hf_models[name]["path"])
    out = str(tmp_path / "bf16")
    export_hf(nnx.state(ours).to_pure_dict(), ours.cfg, out, dtype="bfloat16")
    (f,) = [p for p in os.listdir(out) if p.endswith(".safetensors")]
    assert {e.dtype.__name__ for e in read_header(os.path.join(out, f)).values()} == {"bfloat16"}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager").eval()
    for p in reloaded.parameters():
        assert p.dtype == torch.float32
    again = from_hf(out, dtype=jnp.float32)
    diff = _max_diff(_hf_logits(reloaded, tokens), _our_logits(again, tokens))
    drift = _max_diff(_our_logits(again, tokens), _our_logits(ours, tokens))
    print(f"\n[export bf16] {name}: transformers vs ours on bf16 weights {diff:.3e}; "
          f"bf16 rounding drift {drift:.3e}")
    assert diff <= TOL
    assert 0 < drift < 0.5  # rounded, but still the same model


# ---------------------------------------------------------------------------------------------
# Bad checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def ckpt(hf_models, tmp_path):
    """A fresh, editable copy of a single-file (untied, Llama) checkpoint."""
    d = tmp_path / "ckpt"
    shutil.copytree(hf_models["llama_gqa_untied_llama3rope"]["path"], d)
    return d


def _edit_config(d, **changes):
    """Set keys of d/config.json (a value of None deletes the key)."""
    p = d / "config.json"
    cfg = _read_json(p)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(p, "w") as f:
        json.dump(cfg, f)


def _rewrite_tensors(d, edit):
    path = str(d / "model.safetensors")
    tensors = [(n, np.array(e.array())) for n, e in read_header(path).items()]
    write_file(path, edit(tensors), {"format": "pt"})


def test_sanity_copy_loads(ckpt):
    from_hf(str(ckpt))


def test_unknown_architecture(ckpt):
    _edit_config(ckpt, model_type="gpt2")
    with pytest.raises(UnsupportedConfigError, match=r"model_type='gpt2'.*unknown architecture"):
        from_hf(str(ckpt))


def test_missing_tensor(ckpt):
    _rewrite_tensors(ckpt, lambda ts: [t for t in ts
                                       if t[0] != "model.layers.1.mlp.up_proj.weight"])
    with pytest.raises(ValueError,
                       match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        from_hf(str(ckpt))


def test_shape_mismatch(ckpt):
    _edit_config(ckpt, intermediate_size=64)
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight' has shape .*expected .*"
                                         r"from config\.json"):
        from_hf(str(ckpt))


@pytest.mark.parametrize("changes, match", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
     r"rope_type='yarn' is not supported"),
    ({"rope_parameters": None, "rope_theta": 10000.0,
      "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
     r"rope_type='yarn' is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"mlp_bias": True}, r"mlp_bias=True is not supported"),
])
def test_unsupported_config_option(ckpt, changes, match):
    _edit_config(ckpt, **changes)
    with pytest.raises(UnsupportedConfigError, match=match):
        from_hf(str(ckpt))


def test_unexpected_extra_tensor(ckpt):
    extra = "model.layers.0.self_attn.q_proj.bias"  # a bias this config does not have
    _rewrite_tensors(ckpt, lambda ts: ts + [(extra, np.zeros(48, np.float32))])
    with pytest.raises(ValueError, match=rf"checkpoint tensor '{extra}' is not used by a llama"):
        from_hf(str(ckpt))


def test_inv_freq_buffer_is_ignored(ckpt):
    """Old checkpoints store `rotary_emb.inv_freq`; it carries no parameter and is skipped."""
    _rewrite_tensors(ckpt, lambda ts: ts + [("model.layers.0.self_attn.rotary_emb.inv_freq",
                                             np.ones(4, np.float32))])
    from_hf(str(ckpt))


def test_tied_checkpoint_that_also_stores_lm_head_loads(ckpt):
    """Some tied checkpoints store the (identical) head too; like transformers, ignore it."""
    _edit_config(ckpt, tie_word_embeddings=True)
    _rewrite_tensors(ckpt, lambda ts: [(n, a) for n, a in ts])  # keeps lm_head.weight
    model = from_hf(str(ckpt))
    assert model.cfg.tie_embeddings


def test_missing_config_json(ckpt):
    os.remove(ckpt / "config.json")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        from_hf(str(ckpt))


def test_no_safetensors(ckpt):
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors files"):
        from_hf(str(ckpt))


def test_index_lists_missing_shard(hf_models, tmp_path):
    d = tmp_path / "sharded"
    shutil.copytree(hf_models["llama_bias_tied_sharded"]["path"], d)
    shard = sorted(p for p in os.listdir(d) if p.endswith(".safetensors"))[-1]
    os.remove(d / shard)
    with pytest.raises(FileNotFoundError, match=rf"shard {shard} listed in the index is missing"):
        from_hf(str(d))


@pytest.mark.parametrize("arch, flags, match", [
    ("llama", {"qk_norm": True}, r"llama never has q/k norm"),
    ("qwen2", {"qkv_bias": True, "qk_norm": True}, r"qwen2 never has q/k norm"),
    ("qwen3", {"qk_norm": False}, r"qwen3 always has q/k norm"),
    ("qwen2", {"qkv_bias": False}, r"qwen2 always has q/k/v biases"),
    ("qwen2", {"qkv_bias": True, "o_bias": True}, r"qwen2 has no o_proj bias"),
    ("llama", {"qkv_bias": True, "o_bias": False}, r"biases q/k/v and o together"),
])
def test_export_rejects_configs_hf_cannot_express(tmp_path, arch, flags, match):
    cfg = ModelConfig(vocab_size=VOCAB, dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=8, mlp_dim=24, arch=arch, **flags)
    with pytest.raises(UnsupportedConfigError, match=match):
        config_to_hf(cfg)

