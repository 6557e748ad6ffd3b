"""`train` starting from an `import-hf` checkpoint, and the eval/sample commands on the result."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reason_jax.cli import main  # noqa: E402
from reason_jax.observe.metrics import read_metrics  # noqa: E402

OVERRIDES = [
    "--config.steps=2", "--config.sft.steps=0", "--config.rollout.batch_size=8",
    "--config.rollout.group_size=4", "--config.rollout.max_new_tokens=8",
    "--config.rl.dynamic_sampling=False", "--config.log.progress=False",
    "--config.verifier.num_workers=1", "--config.eval.num_problems=16", "--config.eval.k=2",
    "--config.eval.batch_size=8", "--config.checkpoint.async_save=False",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fromhf")
    # A tiny random Llama over the countdown tokenizer's 24 ids.
    cfg = transformers.LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "hf")
    main(["import-hf", str(root / "hf"), str(root / "imported")])
    wd = str(root / "run")
    main(["train", "--workdir", wd, f"--config.model.init_from={root / 'imported'}"]
         + OVERRIDES)
    return wd


def test_train_starts_from_imported_weights(trained):
    rows = read_metrics(os.path.join(trained, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    with open(os.path.join(trained, "model_config.json")) as f:
        mc = json.load(f)
    assert (mc["dim"], mc["num_layers"], mc["vocab_size"]) == (32, 1, 24)


def test_eval_writes_eval_json(trained, capsys):
    main(["eval", "--workdir", trained] + OVERRIDES)
    with open(os.path.join(trained, "eval.json")) as f:
        out = json.load(f)
    assert out["num_problems"] == 16 and out["k"] == 2 and out["step"] == 2
    for key in ("pass@1", "pass@2", "maj@2", "greedy_accuracy"):
        assert 0.0 <= out[key] <= 1.0
    assert out["per_task"]["countdown"]["num_problems"] == 16


def test_sample_prints_completions(trained, capsys):
    capsys.readouterr()
    main(["sample", "--workdir", trained, "--prompt", "3,7,9:090=", "-n", "3"] + OVERRIDES)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
