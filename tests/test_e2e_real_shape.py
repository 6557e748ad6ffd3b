"""End to end at a real model's shape, on a bucket: a Qwen2 checkpoint written by transformers
(untied embeddings, GQA, biases) with a byte-level BPE `tokenizer.json`, imported to gs://,
trained 2 steps in bf16 (remat, 2 micro-batches, recomputed pi_old, TIS) on a math JSONL read
from gs:// with the math verifier, resumed to step 3, evaluated, exported to gs:// and loaded
back by transformers, whose logits must match ours.

Every path is a `gs://` URL on the GCS emulator (tests/gcs_emulator.py) except the HF source
folder, which import-hf memory-maps. The rollout/learner mismatch in bf16 is printed (`-s`).
"""

import contextlib
import json
import os

import ml_dtypes
import numpy as np
import pytest
from gcs_emulator import local_gs_dirs
from hf_fixtures import byte_level_bpe, random_hf_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

from reason_jax.cli import main  # noqa: E402
from reason_jax.models import from_hf  # noqa: E402
from reason_jax.models.safetensors_io import index_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow

MISMATCH_KEYS = ("mismatch/abs_logp_diff", "mismatch/ratio_max", "mismatch/kl")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _math_rows(n: int, offset: int = 0) -> list[dict]:
    """Addition questions; the answers are integers, judged by the math verifier."""
    rng = np.random.default_rng(offset)
    rows = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(1, 50, 2))
        rows.append({"prompt": f"What is {a}+{b}? Put the answer in \\boxed{{}}.",
                     "answer": str(a + b)})
    return rows


def _write_hf_folder(folder) -> int:
    """A random Qwen2 (D=256, 4 layers, 4 query / 2 KV heads) and its tokenizer files."""
    corpus = [r["prompt"] + " The answer is \\boxed{" + r["answer"] + "}."
              for r in _math_rows(400, offset=99)]
    raw = byte_level_bpe(corpus, vocab_size=512, special_tokens=SPECIALS)
    vocab = raw.get_vocab_size()
    eos = raw.token_to_id("<|endoftext|>")
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        max_position_embeddings=512, bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
    random_hf_model(cfg, seed=0).save_pretrained(folder)
    raw.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "bos_token": None}, f)
    return vocab


def _overrides(bucket, steps: int) -> list[str]:
    imported = bucket.url("imported")
    return [f"--config.{kv}" for kv in (
        f"steps={steps}", "sft.steps=0", f"model.init_from={imported}",
        "model.param_dtype=bfloat16", "model.dtype=bfloat16", "model.remat=True",
        "rl.micro_batches=2", "rl.recompute_old_logp=True", "rl.rollout_correction=tis",
        "rl.dynamic_sampling=False", "rollout.max_new_tokens=128", "rollout.batch_size=8",
        "rollout.group_size=2", "data.task=jsonl", f"data.path={bucket.url('data/train.jsonl')}",
        f"data.eval_path={bucket.url('data/eval.jsonl')}", f"data.tokenizer={imported}",
        "verifier.name=math", "verifier.num_workers=1", "checkpoint.every=2",
        "checkpoint.async_save=False", "log.progress=False", "eval.num_problems=8",
        "eval.k=2", "eval.batch_size=8",
    )]


def _rows(bucket) -> list[dict]:
    text = bucket.read_bytes("run/metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def _persistent_compilation_cache(path: str):
    """The resumed run and eval compile what the first run compiled (compiling dominates this
    test on CPU): a disk cache turns that into reads. Restored afterwards, so the rest of the
    session compiles as usual."""
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
        compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def e2e(gcs_bucket, tmp_path_factory):
    """Steps 1-5 (import, train, resume, eval, export), run from an empty working directory."""
    root = tmp_path_factory.mktemp("e2e")
    with contextlib.chdir(root), _persistent_compilation_cache(str(root / "jax-cache")):
        vocab = _write_hf_folder(str(root / "hf"))
        for name, rows in (("train.jsonl", _math_rows(32)), ("eval.jsonl", _math_rows(8, 1))):
            gcs_bucket.write_bytes(f"data/{name}",
                                   "".join(json.dumps(r) + "\n" for r in rows).encode())
        main(["import-hf", str(root / "hf"), gcs_bucket.url("imported")])
        wd = gcs_bucket.url("run")
        main(["train", "--workdir", wd, *_overrides(gcs_bucket, steps=2)])
        after_two = _rows(gcs_bucket)
        main(["train", "--workdir", wd, *_overrides(gcs_bucket, steps=3)])  # resumes at 2
        main(["eval", "--workdir", wd, *_overrides(gcs_bucket, steps=3)])
        main(["export-hf", wd, gcs_bucket.url("export")])
        local_export = gcs_bucket.download("export", str(root / "export"))
    return {"bucket": gcs_bucket, "root": str(root), "vocab": vocab, "after_two": after_two,
            "export": local_export}


def test_import_copies_weights_and_tokenizer_to_the_bucket(e2e):
    names = set(e2e["bucket"].files("imported"))
    for name in ("model_config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert f"imported/{name}" in names, name
    cfg = json.loads(e2e["bucket"].read_bytes("imported/model_config.json"))
    assert (cfg["dim"], cfg["num_layers"], cfg["num_heads"], cfg["num_kv_heads"]) == (256, 4, 4, 2)
    assert cfg["vocab_size"] == e2e["vocab"] and not cfg["tie_embeddings"]


def test_bf16_training_logs_mismatch_and_resumes(e2e):
    rows = _rows(e2e["bucket"])
    assert [r["step"] for r in e2e["after_two"]] == [1, 2]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for a, b in zip(e2e["after_two"], rows[:2]):  # resuming kept the rows it did not redo
        assert a["loss"] == b["loss"]
    for row in rows:
        print(f"step {row['step']}: " + ", ".join(
            f"{k}={row[k]:.4g}" for k in MISMATCH_KEYS + ("reward/mean", "loss", "grad_norm")))
        for key in MISMATCH_KEYS:
            assert np.isfinite(row[key]), (key, row)
        # Sampler and learner hold the same bf16 weights: they disagree by rounding only
        # (measured ~1e-3 mean |delta log p|); a weight or layout mismatch would be far larger.
        assert 0.0 < row["mismatch/abs_logp_diff"] < 0.05
        assert abs(row["mismatch/kl"]) < 0.01
        assert 1.0 <= row["mismatch/ratio_max"] < 1.5
        assert row["response_length/mean"] > 0
    steps = {n.split("/")[2] for n in e2e["bucket"].files("run/checkpoints")}
    assert {"0", "2", "3"} <= steps
    names = set(e2e["bucket"].files("run"))
    for name in ("run/config.json", "run/curves.png", "run/eval.json"):
        assert name in names, name
    assert any(n.startswith("run/tb/events.out.tfevents.") for n in names)
    cfg = json.loads(e2e["bucket"].read_bytes("run/config.json"))
    assert cfg["model"]["dtype"] == "bfloat16" and cfg["rl"]["rollout_correction"] == "tis"


def test_eval_on_the_bucket(e2e):
    out = json.loads(e2e["bucket"].read_bytes("run/eval.json"))
    assert out["step"] == 3 and out["num_problems"] == 8 and out["k"] == 2
    for key in ("pass@1", "pass@2", "maj@2"):
        assert 0.0 <= out[key] <= 1.0


def test_export_loads_in_transformers_and_matches_our_forward(e2e):
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(e2e["export"]).eval()
    assert reloaded.config.num_key_value_heads == 2 and not reloaded.config.tie_word_embeddings
    tokens = np.random.default_rng(0).integers(0, e2e["vocab"], (2, 24))
    with torch.no_grad():
        ref = reloaded(torch.tensor(tokens)).logits.numpy()
    # The exported values are the bf16 parameters of the run: in float32 both sides agree to
    # float32 rounding, and our bf16 forward (the run's compute dtype) to bf16 rounding.
    ours32 = np.asarray(from_hf(e2e["export"], dtype=jnp.float32)(jnp.asarray(tokens)))
    assert np.abs(ours32 - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
    ours16 = np.asarray(from_hf(e2e["export"], dtype=jnp.bfloat16)(jnp.asarray(tokens)),
                        np.float32)
    err16 = np.abs(ours16 - ref).max()
    print(f"bf16 forward vs transformers fp32: max |dlogit| = {err16:.4g} "
          f"(logit scale {np.abs(ref).max():.3g})")
    assert err16 < 0.05 * max(1.0, np.abs(ref).max())


def test_export_holds_the_trained_weights(e2e):
    """Every tensor is the imported one (rounded to the run's bf16) moved by 3 small optimizer
    steps, and some did move."""
    imported = index_checkpoint(os.path.join(e2e["root"], "hf"))
    exported = index_checkpoint(e2e["export"])
    assert set(exported) == set(imported)
    moved = 0
    for name, entry in exported.items():
        start = imported[name].array().astype(ml_dtypes.bfloat16).astype(np.float32)
        delta = np.abs(entry.array().astype(np.float32) - start)
        assert delta.max() < 0.01, name
        moved += int(np.count_nonzero(delta))
    assert moved > 0


def test_nothing_written_to_a_local_gs_folder(e2e):
    assert local_gs_dirs(e2e["root"]) == []
