"""The examples of a run, whatever form the user's data takes.

``llmdbg.run`` accepts a list of texts, a path to a text/JSONL/Parquet file, a pandas DataFrame or a
Hugging Face ``datasets.Dataset``. They all become one :class:`Examples`: the texts, optional
labels, and the example ids that key every output row. Texts are held in memory (a million short
texts are a few hundred MB; the model's activations are what a run must not hold), so a run can
fingerprint its data for ``resume`` and slice any shard in O(1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["Examples", "read_examples"]

_FORMS = (
    "a list of texts, a path to a .txt (one text per line), .jsonl or .parquet file, a pandas DataFrame, "
    "or a datasets.Dataset"
)


@dataclasses.dataclass(frozen=True)
class Examples:
    """Texts to run on, in order.

    Attributes
    ----------
    texts : list
        One entry per example. Usually ``str``; anything else (None, bytes that are not UTF-8, a
        number) is kept as given and recorded as a bad example by the run, never dropped.
    labels : list or None
        One label per example (int class, class name, or expected text), or None.
    ids : list of int
        ``example_id`` of every example: its position in the data (0 .. N-1).
    source : str
        Where the examples came from, for the manifest.
    """

    texts: list[Any]
    labels: list[Any] | None
    ids: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """A hash of every text and label, in order: a rerun over other data is a different job."""
        h = hashlib.blake2b(digest_size=16)
        for i, text in enumerate(self.texts):
            h.update(repr(text).encode("utf-8", "backslashreplace"))
            if self.labels is not None:
                h.update(b"\x1f" + repr(self.labels[i]).encode("utf-8", "backslashreplace"))
            h.update(b"\x1e")
        return h.hexdigest()


def read_examples(data: Any, *, text_column: str = "text", label_column: str | None = "label") -> Examples:
    """Normalise ``data`` into :class:`Examples`.

    Parameters
    ----------
    data : list of str, str or os.PathLike, pandas.DataFrame or datasets.Dataset
        A path ends in ``.txt`` (one text per line), ``.jsonl``/``.json`` (one object per line) or
        ``.parquet``.
    text_column : str, default "text"
        Column (or JSON key) holding the text, for tables and JSONL.
    label_column : str or None, default "label"
        Column holding the label; used when present, ignored when absent. Explicitly naming a column
        that does not exist is an error only when ``text_column`` tables have columns to name.

    Raises
    ------
    ValueError
        A missing text column (naming the columns that exist), an empty dataset, an unknown file type.
    TypeError
        ``data`` of another type.
    """
    if isinstance(data, (str, os.PathLike)):
        return _read_file(os.fspath(data), text_column, label_column)
    if _is_dataframe(data):
        return _from_columns(
            {c: data[c].tolist() for c in (text_column, label_column) if c is not None and c in data.columns},
            list(map(str, data.columns)),
            text_column,
            label_column,
            "pandas.DataFrame",
        )
    if _is_hf_dataset(data):
        names = list(data.column_names)
        cols = {c: list(data[c]) for c in (text_column, label_column) if c is not None and c in names}
        return _from_columns(cols, names, text_column, label_column, "datasets.Dataset")
    if isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        texts = list(data)
        if not texts:
            raise ValueError("data is empty: give at least one text")
        if all(isinstance(t, dict) for t in texts):  # a list of records
            names = sorted({k for t in texts for k in t})
            cols = {
                c: [t.get(c) for t in texts]
                for c in (text_column, label_column)
                if c is not None and any(c in t for t in texts)
            }
            return _from_columns(cols, names, text_column, label_column, "list of records")
        return Examples(texts, None, list(range(len(texts))), "list of texts")
    raise TypeError(f"data must be {_FORMS}; got {type(data).__name__}")


def _from_columns(
    cols: dict[str, list[Any]], names: list[str], text_column: str, label_column: str | None, source: str
) -> Examples:
    if text_column not in cols:
        raise ValueError(f"data has no text column {text_column!r}; its columns are {names}: pass text_column=")
    texts = cols[text_column]
    if not texts:
        raise ValueError(f"data ({source}) is empty: give at least one text")
    labels = cols.get(label_column) if label_column is not None else None
    return Examples(texts, labels, list(range(len(texts))), source)


def _read_file(path: str, text_column: str, label_column: str | None) -> Examples:
    if not os.path.isfile(path):
        raise ValueError(f"data: no such file {path!r}")
    path = os.path.abspath(path)  # the manifest's record of the source, readable from anywhere
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        names = list(table.column_names)
        cols = {c: table.column(c).to_pylist() for c in (text_column, label_column) if c is not None and c in names}
        return _from_columns(cols, names, text_column, label_column, path)
    if lower.endswith((".jsonl", ".json")):
        records = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ValueError(f"data: line {n} of {path!r} is not JSON ({exc})") from exc
                if not isinstance(rec, dict):
                    raise ValueError(f"data: line {n} of {path!r} is not a JSON object")
                records.append(rec)
        if not records:
            raise ValueError(f"data: {path!r} holds no records")
        names = sorted({k for r in records for k in r})
        cols = {
            c: [r.get(c) for r in records]
            for c in (text_column, label_column)
            if c is not None and any(c in r for r in records)
        }
        return _from_columns(cols, names, text_column, label_column, path)
    if lower.endswith(".txt"):
        texts: list[Any] = []
        with open(path, "rb") as f:
            for raw in f:
                line = raw.rstrip(b"\r\n")
                try:
                    texts.append(line.decode("utf-8"))
                except UnicodeDecodeError:
                    texts.append(line)  # kept as bytes: recorded per example as undecodable
        if not texts:
            raise ValueError(f"data: {path!r} is empty")
        return Examples(texts, None, list(range(len(texts))), path)
    raise ValueError(f"data: {path!r} is not a .txt, .jsonl/.json or .parquet file")


def _is_dataframe(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "column_names")
