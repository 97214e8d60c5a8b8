"""Job files of ``llmdbg run JOB``: a small TOML or YAML file naming the model, the data, the
output directory and the arguments of :func:`llmdbg.run`.

A job file is the command line's way to write down a run so it can be repeated (and resumed)
exactly. It is read here, checked key by key, and turned into the keyword arguments of
:func:`llmdbg.run`; the command line then applies its flags (``--out``, ``--engine``, ...) on top.

Example ``job.toml``::

    model = "./my-model"            # a save_pretrained directory or a Hugging Face name
    data = "reviews.jsonl"          # relative to this file's directory
    out = "runs/reviews"            # likewise
    tasks = ["stats", "embedding", "attention", "loss"]
    batch_size = 16
    label_column = "sentiment"

The same in YAML (``job.yaml`` / ``job.yml``) takes the same keys.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["JOB_KEYS", "JobFileError", "job_arguments", "read_job_file"]


class JobFileError(ValueError):
    """A job file that cannot be read or holds a bad key or value (the message names it)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# key -> (check, what the value must be). TOML has no null, so a value of None can only come from
# YAML; keys whose llmdbg.run argument accepts None say so here.
_Check = tuple[Callable[[Any], bool], str]
_KEYS: dict[str, _Check] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name or a path (a non-empty string)"),
    "tokenizer": (lambda v: isinstance(v, str) and bool(v), "a tokenizer name or a path (a non-empty string)"),
    "data": (lambda v: isinstance(v, str) and bool(v), "a path to a .txt, .jsonl or .parquet file"),
    "out": (lambda v: isinstance(v, str) and bool(v), "an output directory path (a non-empty string)"),
    "tasks": (lambda v: _is_str_list(v) and bool(v), "a non-empty list of task names"),
    "engine": (lambda v: isinstance(v, str), '"local" or "ray"'),
    "batch_size": (_is_int, "an integer"),
    "shard_size": (_is_int, "an integer"),
    "max_length": (_is_int, "an integer"),
    "text_column": (lambda v: isinstance(v, str), "a column name (a string)"),
    "label_column": (lambda v: v is None or isinstance(v, str), "a column name (a string), or null for none"),
    "num_workers": (_is_int, "an integer"),
    "num_gpus": (lambda v: v is None or _is_number(v), "a number (GPUs per Ray actor)"),
    "address": (lambda v: isinstance(v, str), "a Ray cluster address (a string)"),
    "pooling": (lambda v: isinstance(v, str), 'a string ("mean", "cls" or "last")'),
    "embedding_layer": (_is_int, "an integer (an index into the hidden states)"),
    "top_k": (_is_int, "an integer"),
    "attribution_method": (lambda v: isinstance(v, str), "a string (an attribution method)"),
    "target": (lambda v: isinstance(v, str) or _is_int(v), 'a string ("predicted", a label) or a class index'),
    "activation_modules": (_is_str_list, "a list of module names or roles"),
    "activation_positions": (lambda v: isinstance(v, str), 'a string ("all", "last" or "mean")'),
    "activation_dtype": (lambda v: isinstance(v, str), 'a string ("float32", "float16" or "bfloat16")'),
}

#: Every key a job file may hold, in the order of :func:`llmdbg.run`'s arguments.
JOB_KEYS: tuple[str, ...] = tuple(_KEYS)
_REQUIRED = ("model", "data", "out")
_PATHS = ("data", "out")  # relative to the job file's directory
_LISTS = ("tasks", "activation_modules")  # become tuples: llmdbg.run's own types for them


def _parse(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib as toml_reader
        except ImportError:  # Python 3.10
            try:
                import tomli as toml_reader
            except ImportError:
                raise ImportError(
                    f"reading {path} needs a TOML parser: Python 3.11+ has one, on 3.10 run pip install tomli"
                ) from None
        try:
            return toml_reader.loads(path.read_text(encoding="utf-8"))
        except toml_reader.TOMLDecodeError as exc:
            raise JobFileError(f"{path} is not valid TOML: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"reading {path} needs PyYAML: pip install pyyaml") from None
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            # PyYAML's message spans several lines with a caret drawing: keep the problem and place
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise JobFileError(f"{path} is not valid YAML: {problem}{where}") from None
    raise JobFileError(f"job file {path}: expected a .toml, .yaml or .yml file, got {suffix or 'no extension'!r}")


def read_job_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a job file; return its keys with paths resolved.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.toml`` file (read with :mod:`tomllib`, or ``tomli`` on Python 3.10) or a
        ``.yaml``/``.yml`` file (read with ``yaml.safe_load``: PyYAML).

    Returns
    -------
    dict
        The file's keys (a subset of :data:`JOB_KEYS`). ``data`` and ``out`` are absolute
        paths (a relative one is relative to the job file's directory, not to the current
        directory). ``model`` and ``tokenizer`` are made absolute when they name a path that
        exists relative to the job file's directory, else kept as given (a Hugging Face name,
        or a path relative to the current directory). ``tasks`` and ``activation_modules``
        are tuples.

    Raises
    ------
    JobFileError
        (a ValueError) A missing or unreadable file, an unknown extension, invalid TOML/YAML, a
        top level that is not a table, an unknown key (naming the known ones and the closest
        match), or a value of the wrong type (naming the key and what it must be). Missing
        required keys are found by :func:`job_arguments`, once the flags are known.
    ImportError
        No TOML parser (Python 3.10 without ``tomli``) or no PyYAML.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise JobFileError(f"job file {p} does not exist" if not p.exists() else f"job file {p} is not a file")
    try:
        raw = _parse(p)
    except UnicodeDecodeError as exc:
        raise JobFileError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(raw, Mapping):
        raise JobFileError(f"{p} must hold a table of keys (model, data, out, ...), got {type(raw).__name__}")
    unknown = [str(k) for k in raw if k not in _KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], JOB_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise JobFileError(f"{p}: unknown key {unknown[0]!r}{hint}; the known keys are {', '.join(JOB_KEYS)}")
    job: dict[str, Any] = {}
    for key, value in raw.items():
        check, what = _KEYS[key]
        if not check(value):
            raise JobFileError(f"{p}: {key} must be {what}, got {value!r}")
        job[key] = tuple(value) if key in _LISTS else value
    here = p.resolve().parent
    for key in _PATHS:
        if key in job:
            job[key] = str(here / Path(job[key]).expanduser())
    for key in ("model", "tokenizer"):
        if key in job and not Path(job[key]).expanduser().is_absolute() and (here / job[key]).exists():
            job[key] = str(here / job[key])
    return job


def job_arguments(job: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`llmdbg.run` for a job read by :func:`read_job_file`.

    Parameters
    ----------
    job : mapping
        Keys of :data:`JOB_KEYS`.
    **overrides
        Values that replace the job's (the command line's flags); ``None`` values are ignored.

    Returns
    -------
    dict
        ``model``, ``tokenizer``, ``data``, ``out`` and every other key the job gives; the keys
        it does not give are left to :func:`llmdbg.run`'s defaults.

    Raises
    ------
    JobFileError
        A required key is missing from both the job and the overrides.
    """
    merged = {**job, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k in _REQUIRED if k not in merged]
    if missing:
        where = " (or give --out)" if missing == ["out"] else ""
        raise JobFileError(f"the job file misses the required key(s) {', '.join(missing)}{where}")
    merged.setdefault("tokenizer", None)
    return merged
