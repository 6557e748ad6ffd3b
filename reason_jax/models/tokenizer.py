"""Tokenizers: one small interface, a SentencePiece and a Hugging Face implementation.

Everything downstream (prompt bucketing, the sampler's stop condition, the verifier bridge)
talks to the :class:`Tokenizer` protocol only:

- ``encode(text)`` returns ids with *no* BOS/EOS unless asked (``add_bos`` / ``add_eos``),
  because the RL loop builds prompts and completions separately and must not get a stray EOS
  in the middle of a prompt.
- ``decode(ids)`` never stops at EOS (the sampler's lengths say where a completion ends) and
  drops pad/special ids, so a padded row decodes to the same text as the unpadded one.
- ``eos_ids`` is a tuple because chat models stop on several tokens (``<|im_end|>`` and
  ``<|endoftext|>`` for Qwen, ``<|eot_id|>`` and ``<|end_of_text|>`` for Llama 3).

``load_tokenizer(path)`` picks the implementation from the file type or folder content. Paths
may be local or gs:// (an import-hf output in a bucket): files are read whole through
``reason_jax.paths``, never opened by name by the tokenizer libraries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from etils import epath

from reason_jax import paths

__all__ = [
    "Tokenizer",
    "SentencePieceTokenizer",
    "HFTokenizer",
    "load_tokenizer",
    "KNOWN_EOS_TOKENS",
    "KNOWN_PAD_TOKENS",
    "KNOWN_BOS_TOKENS",
]

# Fallbacks when a tokenizer.json comes without config files, most common first.
KNOWN_EOS_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>")
KNOWN_PAD_TOKENS = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")
KNOWN_BOS_TOKENS = ("<s>", "<|begin_of_text|>", "<bos>")


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of reason-jax needs from a tokenizer."""

    eos_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None
    vocab_size: int

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; BOS/EOS only when asked."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``, skipping pad and special ids; does not stop at EOS."""
        ...


def _wrap_specials(
    ids: list[int], bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool
) -> list[int]:
    if add_bos:
        if bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no BOS token")
        ids = [bos_id] + ids
    if add_eos:
        if eos_id is None:
            raise ValueError("add_eos=True but this tokenizer has no EOS token")
        ids = ids + [eos_id]
    return ids


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` file behind the :class:`Tokenizer` interface.

    ``eos_ids`` is the model's single ``</s>`` id; ``pad_id`` falls back to the EOS id when the
    model defines no pad piece (SentencePiece reports -1 then), because the sampler needs some
    valid id to fill finished rows.
    """

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = paths.as_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_proto=path.read_bytes())
        self.vocab_size: int = int(self._sp.vocab_size())
        eos = int(self._sp.eos_id())
        bos = int(self._sp.bos_id())
        pad = int(self._sp.pad_id())
        self.eos_ids: tuple[int, ...] = (eos,) if eos >= 0 else ()
        self.bos_id: int | None = bos if bos >= 0 else None
        if pad >= 0:
            self.pad_id: int = pad
        elif self.eos_ids:
            self.pad_id = self.eos_ids[0]
        else:
            raise ValueError(f"{path}: the model defines neither a pad nor an EOS piece")
        # Control pieces (<s>, </s>, <pad>) never carry text; SentencePiece already drops them
        # on decode, but we filter ourselves so ids outside the vocab (a padded embedding
        # table) are dropped too instead of raising.
        self._skip = {i for i in range(self.vocab_size) if self._sp.is_control(i)}
        self._skip.add(self.pad_id)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; BOS/EOS only when asked."""
        ids = list(self._sp.encode(text))
        eos = self.eos_ids[0] if self.eos_ids else None
        return _wrap_specials(ids, self.bos_id, eos, add_bos, add_eos)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with pad/control ids and out-of-vocab ids removed."""
        kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._skip]
        return self._sp.decode(kept)

    def id_to_piece(self, token_id: int) -> str:
        """The piece string of one id (for debugging and tests)."""
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _read_json(path: epath.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (via the ``tokenizers`` library).

    Special ids are resolved from the files next to ``tokenizer.json`` when present:

    - ``eos_ids``: the union, in this order, of ``generation_config.json`` ``eos_token_id``
      (what HF ``generate`` stops on; a list for chat models), ``tokenizer_config.json``
      ``eos_token`` and ``config.json`` ``eos_token_id``; else every known end token
      (:data:`KNOWN_EOS_TOKENS`) the vocabulary has.
    - ``pad_id``: ``tokenizer_config.json`` ``pad_token``, then ``pad_token_id`` in
      ``generation_config.json`` / ``config.json``, then a known pad token, then the first EOS.
    - ``bos_id``: ``tokenizer_config.json`` ``bos_token`` when that key exists (Qwen sets it to
      null: it adds no BOS even though its config.json names one), else ``bos_token_id`` from
      the configs, else a known BOS token, else ``None``.

    ``eos_ids`` / ``pad_id`` / ``bos_id`` may be overridden by keyword.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        eos_ids: Sequence[int] | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
    ):
        from tokenizers import Tokenizer as _RawTokenizer

        path = paths.as_path(path)
        is_dir = path.is_dir()
        file = path / "tokenizer.json" if is_dir else path
        if not file.is_file():
            raise FileNotFoundError(
                f"HF tokenizer file not found: {file}"
                + (" (the folder has no tokenizer.json)" if is_dir else "")
            )
        self.path = file
        self._tok = _RawTokenizer.from_str(file.read_text(encoding="utf-8"))
        self.vocab_size: int = int(self._tok.get_vocab_size(with_added_tokens=True))

        folder = file.parent
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        gen_cfg = _read_json(folder / "generation_config.json")
        model_cfg = _read_json(folder / "config.json")

        self.eos_ids: tuple[int, ...] = (
            tuple(int(i) for i in eos_ids) if eos_ids is not None
            else self._resolve_eos(tok_cfg, gen_cfg, model_cfg)
        )
        self.bos_id: int | None = (
            bos_id if bos_id is not None else self._resolve_bos(tok_cfg, gen_cfg, model_cfg)
        )
        resolved_pad = pad_id if pad_id is not None else self._resolve_pad(tok_cfg, gen_cfg, model_cfg)
        if resolved_pad is None:
            raise ValueError(
                f"{file}: cannot determine a pad id (no pad or EOS token found); pass pad_id="
            )
        self.pad_id: int = int(resolved_pad)

        # Added special tokens (<|im_start|>, ...) are dropped by skip_special_tokens; pad may be
        # an ordinary token (Llama 3 pads with a reserved id), so it is filtered explicitly.
        self._skip = {self.pad_id}

    def _token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        tid = self._tok.token_to_id(token)
        return None if tid is None else int(tid)

    def _first_known(self, candidates: Iterable[str]) -> int | None:
        for token in candidates:
            tid = self._token_id(token)
            if tid is not None:
                return tid
        return None

    def _resolve_eos(self, tok_cfg, gen_cfg, model_cfg) -> tuple[int, ...]:
        found: list[int] = []
        found += _as_id_list(gen_cfg.get("eos_token_id"))
        tid = self._token_id(_token_content(tok_cfg.get("eos_token")))
        if tid is not None:
            found.append(tid)
        found += _as_id_list(model_cfg.get("eos_token_id"))
        if not found:
            # Without configs we cannot tell a chat model from a base model, so stop on every
            # known end token the vocabulary has.
            found = [tid for tid in map(self._token_id, KNOWN_EOS_TOKENS) if tid is not None]
        return tuple(dict.fromkeys(found))  # de-duplicate, keep order

    def _resolve_bos(self, tok_cfg, gen_cfg, model_cfg) -> int | None:
        if "bos_token" in tok_cfg:
            return self._token_id(_token_content(tok_cfg["bos_token"]))
        for cfg in (gen_cfg, model_cfg):
            ids = _as_id_list(cfg.get("bos_token_id"))
            if ids:
                return ids[0]
        return self._first_known(KNOWN_BOS_TOKENS)

    def _resolve_pad(self, tok_cfg, gen_cfg, model_cfg) -> int | None:
        tid = self._token_id(_token_content(tok_cfg.get("pad_token")))
        if tid is not None:
            return tid
        for cfg in (gen_cfg, model_cfg):
            ids = _as_id_list(cfg.get("pad_token_id"))
            if ids:
                return ids[0]
        tid = self._first_known(KNOWN_PAD_TOKENS)
        if tid is not None:
            return tid
        return self.eos_ids[0] if self.eos_ids else None

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; the tokenizer's own post-processor (BOS templates) is off."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        eos = self.eos_ids[0] if self.eos_ids else None
        return _wrap_specials(ids, self.bos_id, eos, add_bos, add_eos)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` without pad/special tokens and out-of-vocab ids."""
        kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._skip]
        return self._tok.decode(kept, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a file or a model folder.

    - ``*.model`` file -> :class:`SentencePieceTokenizer`
    - ``*.json`` file (a ``tokenizer.json``) -> :class:`HFTokenizer`
    - a folder with ``tokenizer.json`` -> :class:`HFTokenizer` (preferred: it carries the added
      special tokens), else a folder with ``tokenizer.model`` or exactly one ``*.model`` ->
      :class:`SentencePieceTokenizer`.
    """
    path = paths.as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    if not path.is_dir():
        if path.suffix == ".model":
            return SentencePieceTokenizer(path)
        if path.suffix == ".json":
            return HFTokenizer(path)
        raise ValueError(
            f"{path}: unknown tokenizer file type (expected a SentencePiece .model or a "
            "tokenizer.json)"
        )
    if (path / "tokenizer.json").is_file():
        return HFTokenizer(path)
    if (path / "tokenizer.model").is_file():
        return SentencePieceTokenizer(path / "tokenizer.model")
    models = sorted(path.glob("*.model"))
    if len(models) == 1:
        return SentencePieceTokenizer(models[0])
    raise FileNotFoundError(
        f"{path}: no tokenizer found (looked for tokenizer.json, tokenizer.model, *.model"
        + (f"; several .model files: {[m.name for m in models]}" if models else "")
        + ")"
    )
