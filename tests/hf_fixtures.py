"""Hugging Face artefacts built inside tests: byte-level BPE tokenizers and random checkpoints
(pytest puts tests/ on sys.path)."""

from __future__ import annotations

from typing import Iterable, Sequence

CHAT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")


def byte_level_bpe(texts: Iterable[str], *, vocab_size: int = 300,
                   special_tokens: Sequence[str] = CHAT_SPECIALS):
    """A `tokenizers.Tokenizer` trained on `texts`, byte-level like GPT-2/Qwen: every string
    encodes, whatever its characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(list(texts), trainer)
    return raw


def random_hf_model(config, *, seed: int = 0, bias_std: float = 0.1):
    """A transformers model of `config` in eval mode; biases random too (HF initialises them
    to zero, which would hide a bias layout bug)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, bias_std)
    return model
