"""`reason-jax import-hf` / `export-hf` through the CLI, and `--help` lists every command."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_fixtures import random_hf_model  # noqa: E402

from reason_jax.cli import build_parser, main  # noqa: E402
from reason_jax.models import from_hf  # noqa: E402


def test_help_lists_design_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "sft", "eval", "sample", "import-hf", "export-hf", "bench"):
        assert cmd in out
    assert build_parser().parse_args(["bench", "sampler"]).what == "sampler"


def _hf_model(tmp_path):
    cfg = transformers.Qwen2Config(vocab_size=67, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=False)
    model = random_hf_model(cfg)
    src = str(tmp_path / "hf")
    model.save_pretrained(src)
    return model, src


def test_import_then_export_roundtrip(tmp_path, capsys):
    model, src = _hf_model(tmp_path)
    out, back = str(tmp_path / "ckpt"), str(tmp_path / "back")
    main(["import-hf", src, out])
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["arch"] == "qwen2"
    assert os.path.exists(os.path.join(out, "model_config.json"))
    main(["export-hf", out, back])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    tokens = np.random.default_rng(0).integers(0, 67, (2, 11))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.numpy()
        got = reloaded(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ref - got).max() < 1e-5
    ours = np.asarray(from_hf(back)(jnp.asarray(tokens)))
    assert np.abs(ref - ours).max() < 1e-4


def test_export_errors_clearly_without_checkpoint(tmp_path):
    # A user error: one line naming the missing file, no traceback (cli._user_errors).
    with pytest.raises(SystemExit, match="FileNotFoundError: .* has no model_config.json"):
        main(["export-hf", str(tmp_path), str(tmp_path / "out")])
