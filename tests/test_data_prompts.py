"""Prompt files: JSONL / Parquet loading, field mapping, bad-row errors and skipping."""

import gzip
import json

import pytest

from reason_jax.data.prompts import BadRowError, PromptDataset, load_prompts


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_fields_and_pass_through(tmp_path):
    path = _write_jsonl(
        tmp_path / "math.jsonl",
        [
            json.dumps({"question": "1+1?", "solution": 2, "id": "a"}),
            "",
            json.dumps({"question": "2+2?", "solution": "4", "id": "b", "extra": [1]}),
        ],
    )
    ds = load_prompts(path, prompt_field="question", answer_field="solution")
    assert isinstance(ds, PromptDataset) and len(ds) == 2 and ds.num_skipped == 0
    assert ds[0] == {"prompt": "1+1?", "answer": "2", "id": "a"}
    assert ds[1] == {"prompt": "2+2?", "answer": "4", "id": "b", "extra": [1]}
    # Records are copies: editing one does not change the dataset.
    ds[0]["prompt"] = "changed"
    assert ds[0]["prompt"] == "1+1?"
    templated = load_prompts(path, prompt_field="question", prompt_template="Q: {prompt} ({id})\nA:")
    assert templated[1]["prompt"] == "Q: 2+2? (b)\nA:"
    assert load_prompts(path, prompt_field="question", limit=1).records == [
        {"prompt": "1+1?", "solution": 2, "id": "a"}
    ]


def test_jsonl_bad_rows_name_file_and_line(tmp_path):
    good = json.dumps({"prompt": "ok", "numbers": [1, 2, 3], "target": 6})
    cases = {
        '{"prompt": "broken"': "invalid JSON",
        json.dumps({"text": "no prompt"}): "missing field 'prompt'",
        json.dumps({"prompt": 5, "numbers": [1], "target": 1}): "must be a string",
        json.dumps({"prompt": "x", "numbers": [1, 2, 3]}): "missing field 'target'",
        json.dumps(["not", "an", "object"]): "expected a JSON object",
    }
    for i, (bad, reason) in enumerate(cases.items()):
        path = _write_jsonl(tmp_path / f"bad{i}.jsonl", [good, good, bad, good])
        with pytest.raises(BadRowError) as info:
            load_prompts(path, required_fields=("numbers", "target"))
        message = str(info.value)
        assert f"bad{i}.jsonl:3:" in message and reason in message, message
        assert info.value.line == 3


def test_skip_bad_rows_counts(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}", "answer": "1"}) for i in range(5)]
    lines[1] = "not json"
    lines[3] = json.dumps({"prompt": "p3", "answer": None})
    lines.append(json.dumps({"prompt": "p5", "answer": {"x": 1}}))
    path = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    ds = load_prompts(path, answer_field="answer", skip_bad_rows=True)
    assert [r["prompt"] for r in ds] == ["p0", "p2", "p4"]
    assert ds.num_skipped == 3
    assert [line for line, _ in ds.skipped] == [2, 4, 6]


def test_gzip_and_json_array(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b"}]
    gz = tmp_path / "p.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    assert load_prompts(gz).records == rows
    arr = tmp_path / "p.json"
    arr.write_text(json.dumps(rows + [{"nope": 1}]))
    with pytest.raises(BadRowError, match=r"p\.json row 3: missing field"):
        load_prompts(arr)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unsupported"):
        load_prompts(tmp_path / "p.csv")


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"question": "3,7,9:090=", "numbers": [3, 7, 9], "target": 90},
        {"question": None, "numbers": [1, 2, 3], "target": 6},
        {"question": "1,2,3:006=", "numbers": [1, 2, 3], "target": 6},
    ]
    path = tmp_path / "cd.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(BadRowError, match=r"cd\.parquet row 2: missing field 'question'"):
        load_prompts(path, prompt_field="question")
    ds = load_prompts(path, prompt_field="question", required_fields=("numbers", "target"), skip_bad_rows=True)
    assert ds.num_skipped == 1
    assert ds.records == [
        {"prompt": "3,7,9:090=", "numbers": [3, 7, 9], "target": 90},
        {"prompt": "1,2,3:006=", "numbers": [1, 2, 3], "target": 6},
    ]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_prompts(tmp_path / "x.parquet")
