"""Checking what a user gives ``llmdbg report`` before anything runs: the model (loaded offline,
with friendly errors), the texts, the target for the model's type, the output directory, and the
tokenization with truncation warnings. Used by :func:`llmdbg.report.run_report` and the command line.
"""

from __future__ import annotations

import contextlib
import os
import pickle  # only for its exception class: nothing is ever unpickled
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..adapters.task import task_type
from .page import prepare_out_dir

__all__ = [
    "KINDS",
    "TruncationWarning",
    "check_out_dir",
    "check_target",
    "load_model",
    "model_kind",
    "read_texts",
    "tokenize",
]

KINDS = ("classifier", "causal-lm", "masked-lm", "encoder")
# Hugging Face's "no limit" sentinel for tokenizers without a maximum length is about 1e30.
_NO_LIMIT = 10**9


class TruncationWarning(UserWarning):
    """A text was longer than the model's maximum length and was cut."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_error(name: str, what: str, exc: BaseException) -> OSError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = first if len(first) <= 160 else first[:157] + "..."
    # A hub id is "name" or "org/name"; anything else (or anything on disk) is meant as a path.
    looks_like_path = (
        name.startswith((".", "~", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or Path(name).expanduser().exists()
    )
    if looks_like_path and not Path(name).expanduser().exists():
        return OSError(
            f"cannot load the {what} of {name!r}: {name} does not exist; pass --model a "
            "directory that holds config.json and the weights (written by save_pretrained)"
        )
    if looks_like_path:
        hint = (
            f"{name} must hold a Hugging Face {what} (config.json and model weights, tokenizer "
            "files), as written by model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)"
        )
    else:
        mode = "offline (HF_HUB_OFFLINE=1)" if _offline() else "without the model in the local cache"
        hint = (
            f"running {mode}, {name!r} is not in the Hugging Face cache; point --model at a local "
            "directory (one written by model.save_pretrained(DIR) and "
            "tokenizer.save_pretrained(DIR)), or download it once with network access"
        )
    return OSError(f"cannot load the {what} of {name!r} ({first}); {hint}")


def _pickle_error(name: str) -> OSError:
    # torch.load(weights_only=True) refused a pickled checkpoint holding more than tensors. Its own
    # message suggests weights_only=False, which would run whatever the pickle names: never do it.
    return OSError(
        f"cannot load the model of {name!r}: its weights are a pickle (pytorch_model.bin) that holds "
        "objects other than tensors, and llmdbg never unpickles them (that can run arbitrary code); "
        "if you trust the file, load it once yourself and save it with model.save_pretrained(DIR) "
        "(safetensors), then pass --model DIR"
    )


def load_model(name_or_path: str) -> tuple[Any, Any]:
    """Load a model with its task head, and its tokenizer, in eval mode.

    The class is the one named in ``config.architectures`` (so a saved
    ``BertForSequenceClassification`` comes back with its classifier), else ``AutoModel``.

    Parameters
    ----------
    name_or_path : str
        A local directory written by ``save_pretrained`` or a Hugging Face model name (found in
        the local cache when offline).

    Returns
    -------
    model : transformers.PreTrainedModel
    tokenizer : transformers tokenizer

    Raises
    ------
    OSError
        The model or tokenizer cannot be found; the message says how to point at a local path.
    """
    import transformers

    name = str(name_or_path)
    if not name.strip():
        raise ValueError("--model must name a model or a local directory, got an empty string")
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _load_error(name, "model", exc) from exc
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoModel
    with quiet_transformers_progress():
        try:
            model = cls.from_pretrained(name)
        except pickle.UnpicklingError as exc:
            raise _pickle_error(name) from exc
        except (OSError, ValueError) as exc:
            raise _load_error(name, "model", exc) from exc
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError) as exc:
            raise _load_error(name, "tokenizer", exc) from exc
    model.eval()
    return model, tokenizer


def model_kind(model: Any) -> str:
    """``"classifier"``, ``"causal-lm"``, ``"masked-lm"`` or ``"encoder"`` (no task head).

    Raises
    ------
    ValueError
        Encoder-decoder models (not supported by the report yet).
    """
    task = task_type(model)
    if task == "seq2seq":
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder model; llmdbg report supports encoders, "
            "classifiers and causal or masked language models"
        )
    return task


def read_texts(texts: Sequence[str] | None = None, file: str | os.PathLike | None = None) -> list[str]:
    """The texts of ``--text`` and ``--file`` (one text per non-blank line), in that order.

    Raises
    ------
    ValueError
        No text at all, or an empty (blank) ``--text``.
    OSError
        ``file`` cannot be read.
    """
    out: list[str] = []
    for i, text in enumerate(texts or []):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"--text number {i + 1} is empty; texts must be non-empty (at least one character that is not a space)"
            )
        out.append(text)
    if file is not None:
        path = Path(file).expanduser()
        try:
            # utf-8-sig drops a byte-order mark; lines end at \n (or \r\n) only: str.splitlines()
            # would also split inside a text at U+2028, U+0085 or \x1c.
            lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
        except FileNotFoundError as exc:
            raise OSError(f"--file {path}: no such file") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"--file {path} is not UTF-8 text ({exc.reason})") from exc
        found = [line for line in lines if line.strip()]
        if not found:
            raise ValueError(f"--file {path} holds no text (every line is blank)")
        out.extend(found)
    if not out:
        raise ValueError('no input text: give --text "..." (repeatable) or --file texts.txt')
    return out


def _labels(model: Any) -> dict[int, str]:
    id2label = getattr(model.config, "id2label", None) or {}
    n = int(getattr(model.config, "num_labels", len(id2label)) or len(id2label))
    return {i: str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)}


def check_target(target: Any, model: Any, tokenizer: Any, kind: str | None = None) -> Any:
    """Check ``--target`` against the model type and return it in the form the job uses.

    - classifier: a class index (``"2"`` or ``2``) or a label name of ``config.id2label``;
      returns the class index (int);
    - causal LM: a continuation text; returns the text;
    - masked LM: one token for the ``[MASK]`` position; returns its id;
    - encoder without a task head: no target is possible.

    None (no ``--target``) is always accepted: classifiers use the predicted class, causal LMs
    the predicted next token and masked LMs the predicted token at the mask.

    Raises
    ------
    ValueError
        The target does not fit the model type, with what would fit.
    """
    kind = kind or model_kind(model)
    if target is None:
        return None
    cls = type(model).__name__
    if kind == "encoder":
        raise ValueError(
            f"--target does not apply to {cls}, an encoder without a task head: give --target to a "
            "sequence classifier (class index or label), a causal LM (continuation text) or a masked "
            "LM (the token for the mask), or leave it out"
        )
    text = str(target)
    if kind == "classifier":
        labels = _labels(model)
        if text.strip().lstrip("-").isdigit():
            idx = int(text)
            if 0 <= idx < len(labels):
                return idx
            raise ValueError(
                f"--target {idx} is not a class of {cls}: it has {len(labels)} classes, "
                f"0..{len(labels) - 1} ({', '.join(labels.values())})"
            )
        by_name = {v: k for k, v in labels.items()}
        if text in by_name:
            return by_name[text]
        raise ValueError(
            f"--target {text!r} is not a class of {cls}: give a class index "
            f"0..{len(labels) - 1} or one of the labels {sorted(by_name)}"
        )
    if not text.strip():
        raise ValueError("--target is empty; give the text to attribute")
    if kind == "causal-lm":
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"--target {text!r} tokenises to nothing; give a continuation text")
        return text
    # masked LM: one token to put in the mask.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"--target {text!r} is {len(ids)} tokens ({pieces}) for the masked LM {cls}: "
            "give the one token that should fill the mask"
        )
    return int(ids[0])


def _model_max_length(model: Any, tokenizer: Any) -> int | None:
    limits = [int(getattr(tokenizer, "model_max_length", _NO_LIMIT) or _NO_LIMIT)]
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    limit = min(limits)
    return None if limit >= _NO_LIMIT else limit


def tokenize(tokenizer: Any, texts: list[str], max_length: int | None = None, *, model: Any = None) -> Any:
    """Tokenize with padding, truncating texts longer than the model accepts.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        A pad token is set to the EOS token when the tokenizer has none (GPT-2 style). Padding is
        on the right (the tokenizer's own side is restored afterwards).
    texts : list of str
    max_length : int, optional
        Cap in tokens (special tokens included); the model's own maximum (from the tokenizer and
        the config's position embeddings) always applies too.
    model : transformers model, optional
        Gives the maximum from its config.

    Returns
    -------
    transformers.BatchEncoding
        ``input_ids`` and ``attention_mask`` as ``(B, T)`` int64 tensors (``T`` at most the limit).

    Warns
    -----
    TruncationWarning
        Once per text that was cut, with its length and the limit.
    """
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"--max-length must be an integer >= 2, got {max_length!r}")
    limits = [
        m for m in (max_length, _model_max_length(model, tokenizer) if model is not None else None) if m is not None
    ]
    limit = min(limits) if limits else None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if limit is not None:
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > limit:
                why = (
                    f"--max-length {max_length}"
                    if max_length is not None and max_length == limit
                    else "the model's maximum length"
                )
                warnings.warn(
                    f"text {i + 1} has {n} tokens but {why} is {limit}: it was truncated to its first {limit} tokens",
                    TruncationWarning,
                    stacklevel=2,
                )
    side = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"  # the report reads each text's last real token at mask.sum() - 1
    try:
        return tokenizer(texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt")
    finally:
        tokenizer.padding_side = side


def check_out_dir(out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output directory that :func:`~llmdbg.report.prepare_out_dir` would refuse,
    without creating anything (so a failure later leaves no empty directory behind).

    Raises
    ------
    FileExistsError
        ``out_dir`` is a file, or a non-empty directory and ``force`` is False.
    """
    return prepare_out_dir(out_dir, force, create=False)


@contextlib.contextmanager
def quiet_transformers_progress():
    """Hide transformers' own "Loading weights" bar (the demo shows its own)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
