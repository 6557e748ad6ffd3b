"""Planning from shapes alone: a named architecture, or a checkpoint's HF config.json without
weights or tokenizer, sizes the model, and the dry run works from it."""

import json

import pytest

from reason_jax import cli
from reason_jax.config.loading import load_config
from reason_jax.models.architectures import ARCHITECTURES, architecture
from reason_jax.run.policy import model_config_from_run


def test_named_architecture_matches_the_published_model():
    cfg = architecture("qwen2.5-math-1.5b", param_dtype="bfloat16")
    # Qwen2.5-Math-1.5B: 1.54e9 parameters (tied embeddings), 2 KV heads of 128.
    assert cfg.num_params() == 1_543_714_304
    assert (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.tie_embeddings) == (
        28, 2, 128, True)
    assert cfg.qkv_bias and cfg.param_dtype == "bfloat16"
    for name in ARCHITECTURES:
        assert architecture(name).num_params() > 1e9
    with pytest.raises(ValueError, match="unknown model.arch 'gpt-2'"):
        architecture("gpt-2")


def test_recipe_shapes_need_no_checkpoint_or_tokenizer():
    cfg = load_config("configs/qwen2p5_math_dapo.py")
    m = model_config_from_run(cfg, None)
    assert m.num_params() == 1_543_714_304 and m.remat and m.dtype == "bfloat16"


def test_dry_run_from_a_bare_hf_config_json(tmp_path, capsys, monkeypatch):
    """A folder with only a checkpoint's config.json (no weights, no tokenizer files)."""
    monkeypatch.setenv("REASON_JAX_BENCH_DRY_RUN_SUBPROCESS", "0")
    monkeypatch.setenv("REASON_JAX_BENCH_PROMPT_LEN", "8")
    hf = dict(ARCHITECTURES["qwen2.5-1.5b"], hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=1000)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert cli.main(["bench", "train-step", "--dry-run", "--config",
                     "configs/qwen2p5_math_dapo.py", f"--config.model.init_from={tmp_path}",
                     "--config.rollout.batch_size=8", "--config.rollout.group_size=2",
                     "--config.rollout.max_new_tokens=16", "--config.rl.num_minibatches=1",
                     "--config.rl.micro_batches=1", "--config.data.buckets=(16,)",
                     "--config.rollout.kv_cache_gb=0", "--config.rollout.max_rows=8"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["model"]["vocab_size"] == 1000 and r["model"]["num_layers"] == 2
    pd = r["per_device"]
    assert pd["params_bytes"] > 0 and pd["kv_cache_bytes"] > 0
    # R = 8 decode slots for N = 16 samples: the ring is half the lock-step one.
    assert r["R"] == 8
    prefix = pd["kv_cache_prefix_bytes"]
    assert 2 * pd["kv_cache_decode_bytes"] == pd["kv_cache_lock_step_bytes"] - prefix
