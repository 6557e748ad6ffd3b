"""Build the character-level SentencePiece model shipped for the countdown task.

Run ``python -m reason_jax.data.build_countdown_tokenizer`` to (re)write
``reason_jax/data/assets/countdown.model``. The model is written as a ``ModelProto`` by hand
instead of being trained: training orders pieces by corpus frequency and may add pieces we do
not want, while a hand-written vocabulary gives fixed, documented ids and a byte-identical
file on every run (a test rebuilds it and compares with the shipped copy).

Vocabulary (id: piece)::

    0 <pad>   1 <s>   2 </s>   3 <unk>
    4..13  0 1 2 3 4 5 6 7 8 9
    14..   + - * / ( ) , : =  and "▁" (space)

Round trip is exact for any text over these characters: normalisation is ``identity``, no
dummy ``▁`` prefix is added, extra whitespace is kept, and every character is its own piece.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_PIECES = (PAD, BOS, EOS, UNK)
# SentencePiece escapes a space as U+2581 before lookup, so the space piece is stored that way.
SPACE_PIECE = "\u2581"
CHARACTERS = tuple("0123456789") + tuple("+-*/(),:=") + (SPACE_PIECE,)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "assets" / "countdown.model"


def build_model_proto() -> bytes:
    """Return the serialised SentencePiece ``ModelProto`` for the countdown vocabulary."""
    # Imported here: protobuf is only needed to build the file, not to load it.
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    model = spm_pb2.ModelProto()
    piece_type = spm_pb2.ModelProto.SentencePiece.Type
    for piece in SPECIAL_PIECES:
        entry = model.pieces.add()
        entry.piece = piece
        entry.score = 0.0
        entry.type = piece_type.UNKNOWN if piece == UNK else piece_type.CONTROL
    for char in CHARACTERS:
        entry = model.pieces.add()
        entry.piece = char
        entry.score = 0.0
        entry.type = piece_type.NORMAL

    trainer = model.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.CHAR
    trainer.vocab_size = len(model.pieces)
    trainer.split_digits = True
    trainer.byte_fallback = False
    trainer.pad_id = SPECIAL_PIECES.index(PAD)
    trainer.bos_id = SPECIAL_PIECES.index(BOS)
    trainer.eos_id = SPECIAL_PIECES.index(EOS)
    trainer.unk_id = SPECIAL_PIECES.index(UNK)
    trainer.pad_piece, trainer.bos_piece, trainer.eos_piece, trainer.unk_piece = (
        PAD,
        BOS,
        EOS,
        UNK,
    )

    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    # An empty charsmap is the identity rule: no NFKC, so "*" and "-" are never rewritten.
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString(deterministic=True)


def write_model(path: str | Path = DEFAULT_OUTPUT) -> Path:
    """Write the countdown model to ``path`` (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_model_proto())
    return path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m reason_jax.data.build_countdown_tokenizer``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the .model")
    args = parser.parse_args(argv)
    print(write_model(args.output))


if __name__ == "__main__":
    main()
