"""Prompt datasets from JSONL and Parquet files.

Each row becomes a record dict for the rest of the pipeline: ``record["prompt"]`` is the text
to complete, and every other field of the row is passed through untouched, because the record
is what the verifier scores against (math wants ``answer``, countdown ``numbers``/``target``,
code ``tests``). Field names are configurable so that an existing dataset can be used as is::

    load_prompts("gsm8k.jsonl", prompt_field="question", answer_field="answer")

Bad rows (invalid JSON, a missing field, a wrong type) raise :class:`BadRowError` naming the
file and line (row for Parquet). With ``skip_bad_rows=True`` they are skipped, counted in
``PromptDataset.num_skipped`` and reported with a warning. Parquet needs ``pyarrow`` (an
optional dependency: ``pip install pyarrow``). Paths may be local or ``gs://``: files are
streamed through ``reason_jax.paths`` (etils.epath), and messages name the path as given.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from reason_jax import paths

__all__ = ["BadRowError", "PromptDataset", "load_prompts", "load_jsonl", "load_parquet"]

logger = logging.getLogger(__name__)

# How many skipped rows keep their reason in PromptDataset.skipped (all are counted).
_MAX_KEPT_REASONS = 20


class BadRowError(ValueError):
    """A row of a prompt file cannot be turned into a record."""

    def __init__(self, path: str | Path, line: int, reason: str, unit: str = "line"):
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if unit == "line" else f"{path} row {line}: {reason}")


class PromptDataset(Sequence[dict]):
    """An in-memory list of prompt records; also a grain random-access data source.

    Attributes:
        records: the records, in file order.
        num_skipped: rows dropped because of ``skip_bad_rows=True``.
        skipped: ``(line, reason)`` for the first few skipped rows.
        path: where the records came from (for messages), or None.
    """

    def __init__(
        self,
        records: list[dict],
        *,
        num_skipped: int = 0,
        skipped: list[tuple[int, str]] | None = None,
        path: str | None = None,
    ):
        self.records = records
        self.num_skipped = num_skipped
        self.skipped = skipped or []
        self.path = path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # int -> dict (grain calls this with ints)
        if isinstance(index, slice):
            return self.records[index]
        # A shallow copy so a consumer that edits a record cannot change later epochs.
        return dict(self.records[index])

    def __iter__(self) -> Iterator[dict]:
        return (dict(r) for r in self.records)

    def __repr__(self) -> str:
        return f"PromptDataset({len(self)} records, {self.num_skipped} skipped, path={self.path!r})"


class _RowConverter:
    """Turns one raw row into a record, or raises ValueError with the reason."""

    def __init__(
        self,
        prompt_field: str,
        answer_field: str | None,
        required_fields: Sequence[str],
        prompt_template: str | None,
    ):
        self.prompt_field = prompt_field
        self.answer_field = answer_field
        self.required_fields = tuple(required_fields)
        self.prompt_template = prompt_template

    def __call__(self, row: Any) -> dict:
        if not isinstance(row, Mapping):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        for name in (self.prompt_field, *self.required_fields):
            if name not in row or row[name] is None:
                raise ValueError(f"missing field {name!r}")
        prompt = row[self.prompt_field]
        if not isinstance(prompt, str):
            raise ValueError(f"field {self.prompt_field!r} must be a string, got {type(prompt).__name__}")
        record = dict(row)
        if self.prompt_field != "prompt":
            del record[self.prompt_field]
        if self.prompt_template is not None:
            try:
                prompt = self.prompt_template.format(**{**row, "prompt": prompt})
            except (KeyError, IndexError) as e:
                raise ValueError(f"prompt_template refers to a missing field: {e}") from None
        record["prompt"] = prompt
        if self.answer_field is not None:
            if self.answer_field not in row or row[self.answer_field] is None:
                raise ValueError(f"missing field {self.answer_field!r}")
            answer = row[self.answer_field]
            # Numbers are accepted because many math datasets store integer answers; the math
            # verifier compares strings. bool is an int subclass but never a valid answer.
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise ValueError(
                    f"field {self.answer_field!r} must be a string or number, got {type(answer).__name__}"
                )
            if self.answer_field != "answer":
                del record[self.answer_field]
            record["answer"] = answer if isinstance(answer, str) else str(answer)
        return record


class _Collector:
    """Applies the converter row by row, either raising or skipping and counting."""

    def __init__(self, path: str, convert: _RowConverter, skip_bad_rows: bool, unit: str):
        self.path, self.convert, self.skip_bad_rows, self.unit = path, convert, skip_bad_rows, unit
        self.records: list[dict] = []
        self.num_skipped = 0
        self.skipped: list[tuple[int, str]] = []

    def bad(self, line: int, reason: str) -> None:
        if not self.skip_bad_rows:
            raise BadRowError(self.path, line, reason, self.unit)
        self.num_skipped += 1
        if len(self.skipped) < _MAX_KEPT_REASONS:
            self.skipped.append((line, reason))

    def add(self, line: int, row: Any) -> None:
        try:
            self.records.append(self.convert(row))
        except ValueError as e:
            self.bad(line, str(e))

    def finish(self, limit: int | None) -> PromptDataset:
        if self.num_skipped:
            logger.warning(
                "%s: skipped %d bad %ss (first: %s)",
                self.path, self.num_skipped, self.unit, self.skipped[0],
            )
        records = self.records if limit is None else self.records[:limit]
        return PromptDataset(
            records, num_skipped=self.num_skipped, skipped=self.skipped, path=str(self.path)
        )


@contextlib.contextmanager
def _open_text(path: str):
    p = paths.as_path(path)
    if not path.endswith(".gz"):
        with p.open("r", encoding="utf-8") as f:
            yield f
        return
    with p.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        yield f


def _check_file(path: str | Path) -> str:
    """The path as given (for messages), after making sure it is a file."""
    path = str(path)
    if not paths.as_path(path).is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return path


def load_jsonl(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    answer_field: str | None = None,
    required_fields: Sequence[str] = (),
    prompt_template: str | None = None,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """Read a JSON-lines file (optionally ``.gz``); blank lines are ignored.

    A file whose first character is ``[`` is read as one JSON array of rows instead.
    See :func:`load_prompts` for the arguments.
    """
    path = _check_file(path)
    convert = _RowConverter(prompt_field, answer_field, required_fields, prompt_template)
    with _open_text(path) as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return _load_json_array(path, convert, skip_bad_rows, limit)
    collect = _Collector(path, convert, skip_bad_rows, "line")
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                collect.bad(line_no, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            collect.add(line_no, row)
            if limit is not None and len(collect.records) >= limit:
                break
    return collect.finish(limit)


def _load_json_array(
    path: str, convert: _RowConverter, skip_bad_rows: bool, limit: int | None
) -> PromptDataset:
    """A ``.json`` file holding one array of row objects (rows numbered from 1)."""
    with _open_text(path) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            # The whole file is one document, so nothing can be skipped.
            raise BadRowError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from e
    collect = _Collector(path, convert, skip_bad_rows, "row")
    for row_no, row in enumerate(rows, start=1):
        collect.add(row_no, row)
        if limit is not None and len(collect.records) >= limit:
            break
    return collect.finish(limit)


def load_parquet(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    answer_field: str | None = None,
    required_fields: Sequence[str] = (),
    prompt_template: str | None = None,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """Read a Parquet file with pyarrow (rows numbered from 1). See :func:`load_prompts`."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "reading Parquet prompt files needs pyarrow: pip install pyarrow"
        ) from e
    path = _check_file(path)
    convert = _RowConverter(prompt_field, answer_field, required_fields, prompt_template)
    collect = _Collector(path, convert, skip_bad_rows, "row")
    row_no = 0
    # pyarrow reads a seekable file object, so a bucket file needs no local copy.
    with paths.as_path(path).open("rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                collect.add(row_no, row)
                if limit is not None and len(collect.records) >= limit:
                    return collect.finish(limit)
    return collect.finish(limit)


def load_prompts(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    answer_field: str | None = None,
    required_fields: Sequence[str] = (),
    prompt_template: str | None = None,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """Load prompt records from ``.jsonl`` / ``.jsonl.gz`` / ``.json`` or ``.parquet``.

    Args:
        path: the file.
        prompt_field: row field holding the prompt text (a string); stored as ``"prompt"``.
        answer_field: optional row field holding the reference answer (string or number);
            stored as ``"answer"`` (a string), the math verifier's field.
        required_fields: further fields that must be present and non-null (e.g.
            ``("numbers", "target")`` for countdown, ``("tests",)`` for code).
        prompt_template: optional ``str.format`` template applied to the row, e.g.
            ``"Question: {prompt}\\nAnswer:"``; ``{prompt}`` is the prompt field's text.
        skip_bad_rows: skip (and count) bad rows instead of raising :class:`BadRowError`.
        limit: keep at most this many records.

    Returns:
        A :class:`PromptDataset`; every record is the row with the prompt (and answer) fields
        renamed, other fields passed through for the verifier.
    """
    path = str(path)
    name = path.lower()
    kwargs = dict(
        prompt_field=prompt_field,
        answer_field=answer_field,
        required_fields=required_fields,
        prompt_template=prompt_template,
        skip_bad_rows=skip_bad_rows,
        limit=limit,
    )
    if name.endswith(".parquet"):
        return load_parquet(path, **kwargs)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        return load_jsonl(path, **kwargs)
    raise ValueError(f"{path}: unsupported prompt file type (use .jsonl, .jsonl.gz or .parquet)")
