"""Tokenizers: the shipped countdown SentencePiece model and HF tokenizer.json loading."""

import json

import pytest
from hf_fixtures import byte_level_bpe

from reason_jax.data import build_countdown_tokenizer as build
from reason_jax.data.countdown import all_solutions, countdown_tokenizer, eval_problems, generate_problem
from reason_jax.models.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
)


def test_countdown_model_flags_and_ids():
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(build.DEFAULT_OUTPUT.read_bytes())
    assert proto.normalizer_spec.name == "identity"
    assert not proto.normalizer_spec.add_dummy_prefix
    assert not proto.normalizer_spec.remove_extra_whitespaces
    assert proto.trainer_spec.split_digits
    tok = countdown_tokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_ids) == (0, 1, (2,))
    assert tok.vocab_size == 4 + len(build.CHARACTERS)
    # Every character is exactly one piece.
    for char in "0123456789+-*/(),:= ":
        ids = tok.encode(char)
        assert len(ids) == 1 and ids[0] >= 4, char


def test_shipped_model_matches_build_script(tmp_path):
    out = build.write_model(tmp_path / "cd.model")
    assert out.read_bytes() == build.DEFAULT_OUTPUT.read_bytes()


def test_countdown_round_trip_exact():
    tok = countdown_tokenizer()
    texts = [" a leading space", "3 + 7", "  two  spaces  ", "9/3"]
    for i in range(200):
        rec = generate_problem(0, i)
        texts.append(rec["prompt"])
        texts.extend(all_solutions(rec["numbers"], rec["target"]))
    texts += [r["prompt"] for r in eval_problems(50)]
    texts += [s for r in eval_problems(20) for s in all_solutions(r["numbers"], r["target"])]
    for text in texts:
        if set(text) <= set("0123456789+-*/(),:= "):
            ids = tok.encode(text)
            assert len(ids) == len(text)
            assert tok.decode(ids) == text
    # A whole sequence: BOS + prompt + solution + EOS + pads decodes to prompt + solution.
    ids = tok.encode("3,7,9:090=", add_bos=True) + tok.encode("(3+7)*9", add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_ids[0]
    assert tok.decode(ids + [tok.pad_id] * 3) == "3,7,9:090=(3+7)*9"
    # decode does not stop at EOS; ids beyond the vocab (padded embeddings) are dropped.
    assert tok.decode(tok.encode("1+2") + [2] + tok.encode("3") + [tok.vocab_size + 5]) == "1+23"


def _tiny_hf_tokenizer():
    return byte_level_bpe(["hello world", "the answer is 42", "3,7,9:090=(3+7)*9"] * 20)


def test_hf_tokenizer_without_configs(tmp_path):
    raw = _tiny_hf_tokenizer()
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    im_end, eot, pad = (raw.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>", "<pad>"))
    assert tok.eos_ids == (im_end, eot)
    assert tok.pad_id == pad
    assert tok.bos_id is None
    assert tok.vocab_size == raw.get_vocab_size()
    for text in ["hello world", "  the answer is 42\n", "3,7,9:090=(3+7)*9", "émoji ✓"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode([pad, pad] + ids + [im_end, pad]) == text
    assert tok.encode("hi", add_eos=True)[-1] == im_end
    with pytest.raises(ValueError, match="no BOS"):
        tok.encode("hi", add_bos=True)


def test_hf_tokenizer_reads_configs(tmp_path):
    raw = _tiny_hf_tokenizer()
    raw.save(str(tmp_path / "tokenizer.json"))
    im_end, eot, im_start = (raw.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>", "bos_token": None})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, eot]}))
    # config.json names a BOS, but tokenizer_config.json's explicit null wins (as for Qwen).
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": im_start, "eos_token_id": eot}))
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_ids == (im_end, eot)
    assert tok.pad_id == eot
    assert tok.bos_id is None
    # Without tokenizer_config.json the BOS comes from config.json.
    (tmp_path / "tokenizer_config.json").unlink()
    tok = HFTokenizer(tmp_path)
    assert tok.bos_id == im_start
    assert tok.eos_ids == (im_end, eot)
    assert tok.pad_id == raw.token_to_id("<pad>")  # no config names a pad: the known <pad>


def test_load_tokenizer_dispatch_and_errors(tmp_path):
    assert isinstance(load_tokenizer(build.DEFAULT_OUTPUT), SentencePieceTokenizer)
    folder = tmp_path / "sp"
    folder.mkdir()
    build.write_model(folder / "tokenizer.model")
    assert isinstance(load_tokenizer(folder), SentencePieceTokenizer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizer(empty)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer(empty)
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer(tmp_path / "nope.model")
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown tokenizer file type"):
        load_tokenizer(tmp_path / "vocab.txt")
