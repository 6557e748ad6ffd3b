"""`gs://` wherever a path is accepted, against a real GCS JSON API (a local emulator, see
tests/gcs_emulator.py): path helpers, prompt files, tokenizers, import-hf / export-hf, and the
CLI on a bucket workdir (train, SIGTERM, resume, eval, export-hf).

Nothing may land in a local folder named `gs:` (what os.path makes of a gs:// path): every test
runs from a temporary working directory and checks that."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gcs_emulator import local_gs_dirs
from hf_fixtures import byte_level_bpe, random_hf_model

from reason_jax import paths
from reason_jax.cli import main
from reason_jax.observe.metrics import read_metrics

# tests/test_train_loop.py's small recipe (the built-in countdown task, a tiny model), without
# the SFT cold start: what is under test here is where files go, not what is learnt.
SMALL = [
    "sft.steps=0", "rollout.batch_size=8", "rollout.group_size=4",
    "rollout.max_new_tokens=12", "rl.dynamic_sampling=False", "log.progress=False",
    "model.dim=32", "model.mlp_dim=64", "model.num_layers=1", "model.head_dim=16",
    "verifier.num_workers=1", "checkpoint.async_save=False", "eval.num_problems=16",
    "eval.k=2", "eval.batch_size=8", "eval.every=0",
]


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run from an empty directory and fail if a local `gs:` folder appears in it."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert local_gs_dirs(str(tmp_path)) == []


def test_path_helpers_on_a_bucket(gcs_bucket, in_tmp_cwd):
    run = gcs_bucket.url("helpers")
    assert paths.join(run, "a", "b.json") == f"{run}/a/b.json"
    assert paths.is_remote(run) and not paths.is_remote("gs_like/local")
    paths.write_text_atomic(paths.join(run, "a", "b.json"), '{"x": 1}')
    assert json.loads(paths.read_text(paths.join(run, "a", "b.json"))) == {"x": 1}
    assert paths.exists(paths.join(run, "a", "b.json"))
    with paths.atomic_writer(paths.join(run, "big.bin")) as f:
        for i in range(4):
            f.write(bytes([i]) * 1000)
    assert gcs_bucket.read_bytes("helpers/big.bin") == b"".join(bytes([i]) * 1000 for i in range(4))
    # A failure while the bytes are produced uploads nothing.
    with pytest.raises(RuntimeError, match="half-way"):
        with paths.atomic_writer(paths.join(run, "broken.bin")) as f:
            f.write(b"partial")
            raise RuntimeError("half-way")
    assert not paths.exists(paths.join(run, "broken.bin"))
    with pytest.raises(paths.LocalPathRequired, match="memory maps.*gcloud storage cp"):
        paths.require_local(run, "memory maps")


def test_missing_gcsfs_is_named_at_the_first_bucket_access(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gcsfs" else real(name, *a))
    paths._require_gcsfs.cache_clear()
    try:
        assert paths.join("gs://bkt/run", "x.json") == "gs://bkt/run/x.json"  # text only
        with pytest.raises(ImportError, match=r"pip install 'reason-jax\[gcs\]'"):
            paths.exists("gs://bkt/run/x.json")
        assert paths.as_path("local/dir").is_absolute()
    finally:
        paths._require_gcsfs.cache_clear()


def test_prompt_files_from_a_bucket(gcs_bucket, in_tmp_cwd):
    from reason_jax.data.prompts import load_prompts

    rows = [{"question": f"What is {i}+1?", "answer": i + 1} for i in range(5)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    gcs_bucket.write_bytes("data/p.jsonl", text.encode())
    gcs_bucket.write_bytes("data/p.jsonl.gz", gzip.compress(text.encode()))
    for name in ("p.jsonl", "p.jsonl.gz"):
        ds = load_prompts(gcs_bucket.url("data", name), prompt_field="question",
                          answer_field="answer")
        assert [r["prompt"] for r in ds] == [r["question"] for r in rows]
        assert [r["answer"] for r in ds] == [str(i + 1) for i in range(5)]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    local = in_tmp_cwd / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), local)
    gcs_bucket.write_bytes("data/p.parquet", local.read_bytes())
    ds = load_prompts(gcs_bucket.url("data", "p.parquet"), prompt_field="question",
                      answer_field="answer", limit=3)
    assert [r["answer"] for r in ds] == ["1", "2", "3"]
    with pytest.raises(FileNotFoundError, match="prompt file not found: gs://"):
        load_prompts(gcs_bucket.url("data", "missing.jsonl"))


def test_tokenizers_from_a_bucket(gcs_bucket, in_tmp_cwd):
    from reason_jax.data import build_countdown_tokenizer as build
    from reason_jax.models.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer

    raw = byte_level_bpe(["hello world", "the answer is 42"] * 20)
    gcs_bucket.write_bytes("tok/hf/tokenizer.json", raw.to_str().encode())
    gcs_bucket.write_bytes("tok/hf/tokenizer_config.json",
                           json.dumps({"eos_token": "<|im_end|>", "pad_token": "<pad>"}).encode())
    tok = load_tokenizer(gcs_bucket.url("tok", "hf"))
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_ids == (raw.token_to_id("<|im_end|>"),)
    assert tok.pad_id == raw.token_to_id("<pad>")
    assert tok.decode(tok.encode("the answer is 42")) == "the answer is 42"
    gcs_bucket.write_bytes("tok/sp/tokenizer.model", build.DEFAULT_OUTPUT.read_bytes())
    sp = load_tokenizer(gcs_bucket.url("tok", "sp"))
    assert isinstance(sp, SentencePieceTokenizer)
    assert sp.decode(sp.encode("3,7,9:090=")) == "3,7,9:090="
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(gcs_bucket.url("tok", "missing"))


def _tiny_qwen2(folder):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2Config(vocab_size=67, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=False)
    model = random_hf_model(cfg)
    model.save_pretrained(folder)
    return model


def test_import_and_export_hf_through_a_bucket(gcs_bucket, in_tmp_cwd):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = _tiny_qwen2(in_tmp_cwd / "hf")
    byte_level_bpe(["a b c"] * 5).save(str(in_tmp_cwd / "hf" / "tokenizer.json"))
    imported, exported = gcs_bucket.url("hf", "imported"), gcs_bucket.url("hf", "exported")
    main(["import-hf", str(in_tmp_cwd / "hf"), imported])
    names = gcs_bucket.files("hf/imported")
    assert "hf/imported/model_config.json" in names and "hf/imported/tokenizer.json" in names
    assert any(n.startswith("hf/imported/params/") for n in names)
    main(["export-hf", imported, exported, "--dtype", "float32"])
    assert {"hf/exported/config.json", "hf/exported/model.safetensors"} <= set(
        gcs_bucket.files("hf/exported"))
    local = gcs_bucket.download("hf/exported", str(in_tmp_cwd / "back"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(local).eval()
    tokens = torch.tensor(np.random.default_rng(0).integers(0, 67, (2, 9)))
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, reloaded(tokens).logits, atol=1e-5)


def test_import_hf_source_must_be_local(gcs_bucket, in_tmp_cwd):
    with pytest.raises(SystemExit, match="memory-maps the HF safetensors.*gcloud storage cp"):
        main(["import-hf", gcs_bucket.url("anything"), str(in_tmp_cwd / "out")])


# -- the CLI on a bucket workdir ---------------------------------------------------------------

def _cli(bucket, cwd, *args):
    """`python -m reason_jax ARGS` with the emulator's environment, from `cwd`. The runs share
    a persistent compilation cache: each later run compiles what the first one did."""
    env = dict(os.environ, **bucket.env, JAX_COMPILATION_CACHE_DIR=os.path.join(cwd, "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return subprocess.Popen([sys.executable, "-m", "reason_jax", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run_cli(bucket, cwd, *args, timeout=600):
    proc = _cli(bucket, cwd, *args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def _bucket_rows(bucket, name="run/metrics.jsonl"):
    if name not in bucket.files(name):
        return []
    lines = bucket.read_bytes(name).decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _checkpoint_steps(bucket, prefix="run/checkpoints"):
    steps = {n[len(prefix) + 1:].split("/")[0] for n in bucket.files(prefix)}
    return sorted(int(s) for s in steps if s.isdigit())


def _overrides(*extra):
    return [f"--config.{o}" for o in SMALL + list(extra)]


@pytest.fixture(scope="module")
def bucket_run(gcs_bucket, tmp_path_factory):
    """`reason-jax train` 2 steps on gs://BUCKET/run; returns (bucket, workdir, cwd)."""
    cwd = str(tmp_path_factory.mktemp("cwd"))
    wd = gcs_bucket.url("run")
    _run_cli(gcs_bucket, cwd, "train", "--workdir", wd, *_overrides("steps=2", "checkpoint.every=2"))
    return gcs_bucket, wd, cwd


@pytest.mark.slow
def test_train_writes_everything_into_the_bucket(bucket_run):
    bucket, wd, cwd = bucket_run
    assert [r["step"] for r in _bucket_rows(bucket)] == [1, 2]
    names = set(bucket.files("run"))
    for name in ("run/config.json", "run/model_config.json", "run/curves.png"):
        assert name in names, name
    assert json.loads(bucket.read_bytes("run/config.json"))["rollout"]["group_size"] == 4
    assert any(n.startswith("run/tb/events.out.tfevents.") for n in names)
    assert _checkpoint_steps(bucket) == [0, 2]
    assert bucket.read_bytes("run/curves.png").startswith(b"\x89PNG")
    assert local_gs_dirs(cwd) == []


@pytest.mark.slow
def test_sigterm_resume_eval_export_on_a_bucket(bucket_run, tmp_path):
    bucket, wd, cwd = bucket_run
    # A later run (resuming at step 2) is stopped by SIGTERM: it checkpoints the step it is in,
    # uploads metrics.jsonl and exits 0. Rows reach the bucket at checkpoints (every 2 steps).
    proc = _cli(bucket, cwd, "train", "--workdir", wd,
                *_overrides("steps=200", "checkpoint.every=2"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(_bucket_rows(bucket)) >= 4:
            break
        time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode()[-3000:]
    stopped = len(_bucket_rows(bucket))
    assert 4 <= stopped < 200
    assert _checkpoint_steps(bucket)[-1] == stopped  # the step running at SIGTERM was saved

    # Resume to one step past it: rows continue without gaps or duplicates.
    _run_cli(bucket, cwd, "train", "--workdir", wd, *_overrides(f"steps={stopped + 1}"))
    assert [r["step"] for r in _bucket_rows(bucket)] == list(range(1, stopped + 2))
    assert _checkpoint_steps(bucket)[-1] == stopped + 1
    tb_local = bucket.download("run/tb", str(tmp_path / "tb"))
    from helpers import read_tb_scalars

    assert [s for s, _ in read_tb_scalars(tb_local)["loss"]] == list(range(1, stopped + 2))

    _run_cli(bucket, cwd, "eval", "--workdir", wd, *_overrides())
    summary = json.loads(bucket.read_bytes("run/eval.json"))
    assert summary["step"] == stopped + 1 and 0.0 <= summary["pass@1"] <= 1.0

    _run_cli(bucket, cwd, "export-hf", wd, bucket.url("export"))
    names = set(bucket.files("export"))
    assert {"export/config.json", "export/model.safetensors"} <= names
    assert json.loads(bucket.read_bytes("export/config.json"))["num_hidden_layers"] == 1
    assert local_gs_dirs(cwd) == []
    # The same rows, read through the library (epath) rather than the raw client.
    assert len(read_metrics(paths.join(wd, "metrics.jsonl"))) == stopped + 1
